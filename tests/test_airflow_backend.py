"""The secrets backend through Airflow's own lookup paths: its CLI, ``airflow dags test`` and
``dag.test()``, as ``[secrets] backend`` and as ``[workers] secrets_backend``."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from airflow_provider_mlsecrets.store.engine import engine_for
from tests.airflow_env import BACKEND, ENDPOINT, HARMLESS, PASSWORD, ROOT, AirflowEnv
from tests.airflow_env import airflow_env as airflow_env  # the fixture


def test_connections_and_variables_through_the_airflow_cli(airflow_env: AirflowEnv) -> None:
    got = airflow_env.run("connections", "get", "mlsecrets_example_db", "-o", "json")
    assert got.returncode == 0, got.stderr[-3000:]
    [conn] = json.loads(got.stdout)
    assert (conn["host"], conn["login"], conn["password"], conn["port"]) == (
        "db.internal", "ml", PASSWORD, "5432")
    assert conn["extra_dejson"] == {"sslmode": "require"}
    uri = json.loads(airflow_env.run("connections", "get", "uri_db", "-o", "json").stdout)[0]
    assert (uri["conn_type"], uri["host"], uri["password"]) == ("mysql", "mysql.internal",
                                                                 PASSWORD)
    variable = airflow_env.run("variables", "get", "mlsecrets_example_endpoint")
    assert variable.returncode == 0 and variable.stdout.strip() == ENDPOINT
    records = airflow_env.audit()
    assert [(p, path, o) for p, path, o, _ in records[-3:]] == [
        ("airflow-pipeline", "connections/mlsecrets_example_db", "allowed"),
        ("airflow-pipeline", "connections/uri_db", "allowed"),
        ("airflow-pipeline", "variables/mlsecrets_example_endpoint", "allowed")]
    assert records[-1][3]["component"] == "airflow variables"


def test_a_sensitive_config_option_given_as_secret(airflow_env: AirflowEnv) -> None:
    got = airflow_env.run("config", "get-value", "core", "fernet_key",
                          AIRFLOW__CORE__FERNET_KEY_SECRET="fernet_key")
    assert got.returncode == 0, got.stderr[-3000:]
    assert got.stdout.strip() == "fernet-canary-value-7"


def test_a_denied_id_is_not_served_from_the_environment_instead(airflow_env: AirflowEnv) -> None:
    got = airflow_env.run("connections", "get", "not_granted", "-o", "json",
                          AIRFLOW_CONN_NOT_GRANTED="postgres://u:env-canary@h/db")
    assert got.returncode != 0
    assert "env-canary" not in got.stdout and "vault-pw" not in got.stdout
    assert "AirflowSecretsBackendAccessDenied" in got.stderr
    assert airflow_env.audit()[-1][1:3] == ("connections/not_granted", "denied")


def test_a_missing_id_falls_through_to_the_next_backend(airflow_env: AirflowEnv) -> None:
    got = airflow_env.run("connections", "get", "only_in_env", "-o", "json",
                          AIRFLOW_CONN_ONLY_IN_ENV="postgres://u:p@envhost/db")
    assert got.returncode == 0, got.stderr[-3000:]
    assert json.loads(got.stdout)[0]["host"] == "envhost"


@pytest.mark.parametrize("workers", [False, True], ids=["secrets-backend", "workers-backend"])
def test_airflow_dags_test_reads_from_the_vault_and_logs_no_value(
        airflow_env: AirflowEnv, workers: bool) -> None:
    got = airflow_env.run("dags", "test", "mlsecrets_example_connections", workers=workers)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert "password of 16 characters" in got.stdout + got.stderr
    output = got.stdout + got.stderr
    logs = "".join(p.read_text(errors="replace") for p in (airflow_env.home / "logs").rglob("*")
                   if p.is_file())
    for value in (PASSWORD, ENDPOINT):
        assert value not in output and value not in logs
    [*_, (principal, path, outcome, context)] = airflow_env.audit()
    assert (principal, path, outcome) == ("airflow-pipeline",
                                          "variables/mlsecrets_example_endpoint", "allowed")
    assert (context["dag_id"], context["task_id"], context["try_number"], context["map_index"]) == (
        "mlsecrets_example_connections", "use_credentials", 1, -1)
    assert str(context["run_id"]).startswith("manual__")


@pytest.fixture(scope="module")
def api_server(airflow_env: AirflowEnv) -> Iterator[str]:
    """A real Airflow API server, so tasks run in a supervised worker process, as in
    production, with the Execution API and the task log files."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {**airflow_env.env, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/"}
    server = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host",
                               "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, "the API server exited"
                time.sleep(0.5)
        else:
            pytest.fail("the Airflow API server did not come up in 120 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_values_are_masked_in_the_task_log_whatever_their_key(
        airflow_env: AirflowEnv, api_server: str) -> None:
    got = airflow_env.run("dags", "test", "mlsecrets_leak_probe", "--use-executor", workers=True,
                          AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "tests" / "dags"),
                          AIRFLOW__CORE__EXECUTOR="LocalExecutor",
                          # one worker: LocalExecutor.end() in Airflow 3.3 can miss an idle
                          # worker's shutdown message when it spawned several, and hang
                          AIRFLOW__CORE__PARALLELISM="1",
                          AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{api_server}/execution/")
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    [task_log] = (airflow_env.home / "logs" / "dag_id=mlsecrets_leak_probe").rglob("*.log")
    events = [json.loads(line).get("event", "") for line in task_log.read_text().splitlines()]
    assert "variable says ***" in events and "password says ***" in events
    assert HARMLESS not in task_log.read_text() and PASSWORD not in task_log.read_text()
    [*_, (principal, _path, outcome, context)] = airflow_env.audit()
    assert (principal, outcome, context["dag_id"], context["task_id"]) == (
        "airflow-pipeline", "allowed", "mlsecrets_leak_probe", "leak")


def test_dag_test_in_process(airflow_env: AirflowEnv, tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('m', "
        f"{str(ROOT / 'example_dags' / 'mlsecrets_connections.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "from airflow.utils.state import DagRunState\n"
        "run = m.mlsecrets_example_connections().test()\n"
        "sys.exit(0 if run.state == DagRunState.SUCCESS else 1)\n")
    env = {**airflow_env.env, "AIRFLOW__WORKERS__SECRETS_BACKEND": BACKEND,
           "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps(
               {"token_file": str(airflow_env.pipeline_token)})}
    got = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert PASSWORD not in got.stdout + got.stderr


def test_ids_outside_the_lookup_pattern_touch_nothing(airflow_env: AirflowEnv,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_mlsecrets.keys import _session
    from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend

    hsm_calls: list[object] = []
    real_run = _session.run

    def counting_run(*args: Any, **kwargs: Any) -> Any:  # instrumentation, not a mock
        hsm_calls.append(args[1])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(_session, "run", counting_run)

    backend = MLSecretsBackend(connections_lookup_pattern="^mlsecrets_",
                               variables_lookup_pattern="^model_", config_prefix=None,
                               token_file=str(airflow_env.pipeline_token),
                               home=str(airflow_env.vault.settings.home))
    assert backend.get_conn_value("uri_db") is None
    assert backend.get_variable("mlsecrets_example_endpoint") is None
    assert backend.get_config("fernet_key") is None
    assert backend._vault is None  # no vault, so no query and no HSM call was possible
    statements: list[str] = []
    engine = engine_for(airflow_env.vault.settings.db_url)

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert backend.get_variable("model_registry_url") == HARMLESS
        counted, hsm_counted = len(statements), len(hsm_calls)
        assert counted > 0 and hsm_counted > 0
        assert backend.get_conn_value("other_db") is None
        assert backend.get_variable("not_a_model") is None
        assert (len(statements), len(hsm_calls)) == (counted, hsm_counted)
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_native_async_lookups(airflow_env: AirflowEnv) -> None:
    from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend

    backend = MLSecretsBackend(token_file=str(airflow_env.pipeline_token),
                               home=str(airflow_env.vault.settings.home))

    async def lookups() -> tuple[str | None, str | None, object]:
        return (await backend.aget_conn_value("uri_db"),
                await backend.aget_variable("model_registry_url"),
                await backend.aget_connection("missing_conn"))

    conn, variable, missing = asyncio.run(lookups())
    assert conn is not None and PASSWORD in conn
    assert variable == HARMLESS and missing is None


def test_bad_configuration_fails_at_construction() -> None:
    from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend

    with pytest.raises(ValueError, match="unknown backend_kwargs"):
        MLSecretsBackend(pin="1234")
    with pytest.raises(ValueError, match="invalid lookup pattern"):
        MLSecretsBackend(connections_lookup_pattern="(")


def test_unforeseen_failures_and_missing_keys_stop_the_chain(airflow_env: AirflowEnv,
                                                             tmp_path: Path) -> None:
    broken_token = tmp_path / "broken.token"
    broken_token.write_bytes(b"\xff\xfe not utf-8")
    for kwargs in ({"token_file": str(broken_token)},
                   {"token_file": str(airflow_env.pipeline_token), "key_prefix": "other"}):
        env = {"AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
               "AIRFLOW_CONN_MLSECRETS_EXAMPLE_DB": "postgres://u:env-canary@envhost/db"}
        got = subprocess.run(
            [sys.executable, "-m", "airflow", "connections", "get", "mlsecrets_example_db",
             "-o", "json"], capture_output=True, text=True, timeout=300, check=False,
            env={**airflow_env.env, "AIRFLOW__SECRETS__BACKEND": BACKEND, **env})
        assert got.returncode != 0 and "env-canary" not in got.stdout, kwargs
        assert "AirflowSecretsBackendAccessDenied" in got.stderr


def test_a_token_file_kwarg_wins_over_an_inline_token(airflow_env: AirflowEnv) -> None:
    from airflow_provider_mlsecrets.settings import Settings

    settings = Settings.load({"MLSECRETS_TOKEN": "mls_inline",
                              "MLSECRETS_HOME": str(airflow_env.vault.settings.home)},
                             overrides={"token_file": str(airflow_env.pipeline_token)})
    assert settings.read_caller_token() == airflow_env.pipeline_token.read_text().strip()
