"""``mlsecrets doctor`` (and ``airflow mlsecrets doctor``) on real Airflow homes: the real
configuration parser, a migrated metadata database with serialized DAGs, real files and
modes. No server needs to run: the doctor reads configuration, files and the database."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from airflow_provider_mlsecrets.doctor import EXIT_HAZARD
from tests.airflow_env import BACKEND, AirflowEnv
from tests.airflow_env import airflow_env as airflow_env  # the fixture

POOL_DAG = '''
from datetime import datetime
from airflow.sdk import dag, task


@dag(dag_id={dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
     default_args={{"queue": {queue!r}}})
def pipeline():
    @task
    def step() -> None:
        pass

    step()


pipeline()
'''


def home_from(air: AirflowEnv, base: Path, dags: dict[str, str | None]) -> dict[str, str]:
    """A fresh Airflow home (a copy of the migrated metadata database) whose DAGs folder
    holds one DAG per entry, on the given queue (``None``: the default queue), serialized."""
    home, folder = base / "airflow", base / "dags"
    home.mkdir(parents=True)
    folder.mkdir()
    shutil.copy(air.home / "airflow.db", home / "airflow.db")
    for dag_id, queue in dags.items():
        (folder / f"{dag_id}.py").write_text(POOL_DAG.format(dag_id=dag_id,
                                                             queue=queue or "default"))
    env = {**air.env, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(folder)}
    got = subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert got.returncode == 0, got.stderr[-3000:]
    return env


def doctor(env: dict[str, str], *args: str, airflow: bool = False
           ) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "airflow", "mlsecrets"] if airflow else [
        sys.executable, "-m", "airflow_provider_mlsecrets.cli.main"]
    return subprocess.run([*command, "doctor", *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def report(got: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(got.stdout)
    return data


def by_check(data: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for finding in data["findings"]:
        out.setdefault(finding["check"], []).append(finding)
    return out


def test_local_executor_is_one_trust_domain_and_the_jwt_secret_is_in_reach(
        airflow_env: AirflowEnv, tmp_path: Path) -> None:
    env = home_from(airflow_env, tmp_path, {"team_a_train": None, "team_b_serve": None})
    env.update(AIRFLOW__CORE__EXECUTOR="LocalExecutor", AIRFLOW__SECRETS__BACKEND=BACKEND)
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"]  # as the fixture (and many setups) give it
    got = doctor(env, "--json")
    assert got.returncode == EXIT_HAZARD, got.stdout + got.stderr[-3000:]
    found = by_check(report(got))
    (pool,) = found["pools.shared-user-executor"]
    assert pool["severity"] == "hazard"
    assert "LocalExecutor" in pool["finding"] and "one trust domain" in pool["finding"]
    assert "team_a_train" in pool["finding"] and "team_b_serve" in pool["finding"]
    (jwt,) = found["jwt.secret-in-environment"]
    assert jwt["severity"] == "hazard" and "AIRFLOW__API_AUTH__JWT_SECRET" in jwt["finding"]
    assert "jwt_private_key_path" in jwt["fix"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] not in got.stdout + got.stderr
    # the same through Airflow's own CLI, as a table for people
    table = doctor(env, airflow=True)
    assert table.returncode == EXIT_HAZARD, table.stdout + table.stderr[-3000:]
    text = " ".join(table.stdout.split())
    assert "LocalExecutor" in table.stdout and "AIRFLOW__API_AUTH__JWT_SECRET" in table.stdout
    assert "[api_auth]" in text and "hazard(s)" in text


def test_per_pool_queues_and_an_asymmetric_key_pass(airflow_env: AirflowEnv,
                                                    tmp_path: Path) -> None:
    env = home_from(airflow_env, tmp_path, {"team_a_train": "pool_a",
                                            "team_b_serve": "pool_b"})
    key = tmp_path / "jwt-private.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key.chmod(0o600)
    (tmp_path / "airflow" / "airflow.cfg").write_text(  # no jwt_secret anywhere
        "[core]\nload_examples = False\n")
    vault_home = tmp_path / "vault"
    vault_home.mkdir(mode=0o700)
    (tmp_path / "airflow" / "logs").chmod(0o750)  # made by reserialize
    env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW__API_AUTH__JWT_SECRET")}
    env.update(AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
               AIRFLOW__CELERY__BROKER_URL="redis://scheduler:not-a-real-pw@127.0.0.1:6379/0",
               AIRFLOW__CELERY__RESULT_BACKEND="redis://results:not-a-real-pw@127.0.0.1:6379/1",
               AIRFLOW__CELERY__WORKER_ENABLE_REMOTE_CONTROL="False",
               AIRFLOW__API_AUTH__JWT_PRIVATE_KEY_PATH=str(key),
               AIRFLOW__SECRETS__BACKEND=BACKEND, MLSECRETS_HOME=str(vault_home))
    got = doctor(env, "--json")
    data = report(got)
    assert got.returncode == 0, json.dumps(data, indent=1) + got.stderr[-3000:]
    assert data["hazards"] == 0
    found = by_check(data)
    queues = {f["finding"] for f in found["pools.queue"]}
    assert any("'pool_a' runs only DAG team_a_train" in q for q in queues), queues
    assert any("'pool_b' runs only DAG team_b_serve" in q for q in queues), queues
    assert found["jwt.asymmetric"][0]["severity"] == "ok"
    assert found["broker.user"][0]["severity"] == "ok"
    assert found["plugin.loaded"][0]["severity"] == "ok"
    assert "not-a-real-pw" not in got.stdout + got.stderr
    # one queue for both DAGs is one trust domain again
    shared = home_from(airflow_env, tmp_path / "shared", {"team_a_train": "pool_a",
                                                          "team_b_serve": "pool_a"})
    shared.update({k: v for k, v in env.items() if k.startswith(("AIRFLOW__CORE__EXECUTOR",
                                                                 "AIRFLOW__CELERY"))})
    one = doctor(shared, "--json")
    assert one.returncode == EXIT_HAZARD
    (finding,) = by_check(report(one))["pools.one-queue"]
    assert "'pool_a'" in finding["finding"] and "team_b_serve" in finding["finding"]


def test_a_careless_deployment_is_named_item_by_item(airflow_env: AirflowEnv,
                                                     tmp_path: Path) -> None:
    home = tmp_path / "airflow"
    home.mkdir()
    (home / "airflow.cfg").write_text("[core]\nload_examples = False\n[api_auth]\n"
                                      "jwt_secret = in-the-file-0123456789\n")
    (home / "airflow.cfg").chmod(0o644)
    passwords = home / "simple_auth_manager_passwords.json.generated"
    passwords.write_text('{"admin": "pw"}')
    passwords.chmod(0o644)
    vault_home = tmp_path / "vault"
    vault_home.mkdir(mode=0o755)
    vault_home.chmod(0o755)
    pin = vault_home / "pin"
    pin.write_text("1234")
    pin.chmod(0o644)
    token = tmp_path / "worker.token"
    token.write_text("t")
    env = {k: v for k, v in airflow_env.env.items() if not k.startswith("AIRFLOW__API_AUTH")}
    env.update(AIRFLOW_HOME=str(home),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'gone' / 'airflow.db'}",
               AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
               AIRFLOW__CELERY__BROKER_URL="redis://127.0.0.1:6379/0",
               AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
               AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://10.1.2.3:8080/execution/",
               AIRFLOW__WORKERS__SECRETS_BACKEND=BACKEND,
               AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS=json.dumps({"token_file": str(token)}),
               MLSECRETS_HOME=str(vault_home), MLSECRETS_PKCS11_PIN_FILE=str(pin),
               MLSECRETS_URL="http://10.1.2.3:8080", MLSECRETS_TOKEN="inline-token-canary")
    got = doctor(env, "--json")
    assert got.returncode == EXIT_HAZARD, got.stdout + got.stderr[-3000:]
    found = by_check(report(got))
    hazards = {check for check, items in found.items()
               if any(f["severity"] == "hazard" for f in items)}
    assert {"jwt.secret-in-config-file", "auth.all-admins", "auth.password-file",
            "broker.no-credentials", "broker.result-backend", "env.worker-credentials",
            "transport.plain-http", "files.vault-home", "files.pin"} <= hazards, sorted(hazards)
    assert found["broker.remote-control"][0]["severity"] == "warning"
    assert len(found["transport.plain-http"]) == 2  # MLSECRETS_URL and the Execution API
    assert found["env.inline-credential"][0]["severity"] == "warning"
    # the metadata database is down: said so, and the rest still checked
    (dags,) = found["pools.dags"]
    assert dags["severity"] == "warning" and "not reachable" in dags["finding"]
    assert "inline-token-canary" not in got.stdout + got.stderr
    assert "in-the-file-0123456789" not in got.stdout + got.stderr


def test_the_api_server_logs_the_findings_once(airflow_env: AirflowEnv, tmp_path: Path) -> None:
    env = home_from(airflow_env, tmp_path, {"team_a_train": None})
    env.update(AIRFLOW__CORE__EXECUTOR="LocalExecutor")
    program = (
        "import logging\n"
        "from airflow_provider_mlsecrets.doctor import log_findings_once\n"
        "log = logging.getLogger('mlsecrets.doctor')\n"
        "first = log_findings_once(log)\n"
        "assert first and log_findings_once(log) == []\n")
    got = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert got.returncode == 0, got.stderr[-3000:]
    lines = [line for line in (got.stdout + got.stderr).splitlines()
             if "mlsecrets doctor" in line]
    assert any("error" in line and "mlsecrets doctor: hazard: LocalExecutor" in line
               for line in lines), lines
    assert sum("hazard(s)" in line for line in lines) == 1  # once, not twice
    assert not any("plugin.not-loaded" in line for line in lines)


def configured_home(air: AirflowEnv, tmp_path: Path, **settings: str) -> dict[str, str]:
    """An Airflow home with a configuration only (no metadata database), plus ``settings``."""
    home = tmp_path / "airflow"
    home.mkdir()
    (home / "airflow.cfg").write_text("[core]\nload_examples = False\n")
    env = {k: v for k, v in air.env.items() if not k.startswith("AIRFLOW__")}
    env.update(AIRFLOW_HOME=str(home),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'gone' / 'airflow.db'}",
               **settings)
    return env


CELERY = {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
          "AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:6379/0"}


@pytest.mark.parametrize(("settings", "expected"), [
    ({"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}, "consoles.local-executor"),
    ({**CELERY, "AIRFLOW__CELERY__TASK_LOGS_TO_STDOUT": "True"},
     "consoles.celery-task-logs-to-stdout"),
    ({**CELERY, "AIRFLOW__LOGGING__TASK_LOGS_TO_STDOUT": "True"},
     "consoles.celery-task-logs-to-stdout"),  # [celery] unset falls back to [logging]
    (CELERY, None),
    ({**CELERY, "AIRFLOW__LOGGING__TASK_LOGS_TO_STDOUT": "True",
      "AIRFLOW__CELERY__TASK_LOGS_TO_STDOUT": "False"}, None),  # [celery] wins
], ids=["local", "celery-on", "celery-via-logging", "celery-default", "celery-off-wins"])
def test_a_console_that_repeats_task_output_unmasked_is_named(
        airflow_env: AirflowEnv, tmp_path: Path, settings: dict[str, str],
        expected: str | None) -> None:
    got = doctor(configured_home(airflow_env, tmp_path, **settings), "--json")
    found = {check: items for check, items in by_check(report(got)).items()
             if check.startswith("consoles.")}
    if expected is None:
        assert found == {}, found
        return
    assert set(found) == {expected}, found
    (finding,) = found[expected]
    # a warning: whether it leaks depends on where that console goes, which is not seen here
    assert finding["severity"] == "warning"
    where = "scheduler's console" if "local" in expected else "Celery worker's console"
    assert where in finding["finding"] and "does not mask" in finding["finding"]
    assert "shared log sinks" in finding["fix"]


CONSOLE_COPY = '''
import sys
{configure}
from airflow.sdk.execution_time.comms import MaskSecret
from airflow.sdk.execution_time.request_handlers import handle_mask_secret
from airflow.sdk.execution_time.supervisor import forward_to_log, log

handle_mask_secret(MaskSecret(value={canary!r}, name=None))  # the task's mask_secret
copy = forward_to_log((log,), logger="task.stdout", level=20)  # subprocess_logs_to_stdout
next(copy)
copy.send(b"the task printed {canary}\\n")
'''
CORE_LOGGING = ("import airflow.settings\nfrom airflow.logging_config import configure_logging\n"
                "configure_logging()")
SDK_LOGGING = ("from airflow.sdk.log import configure_logging\n"
               "configure_logging(output=sys.stdout.buffer, json_output=True)")


@pytest.mark.parametrize(("configure", "masked"), [(CORE_LOGGING, False), (SDK_LOGGING, True)],
                         ids=["scheduler-or-celery-worker", "kubernetes-pod"])
def test_the_doctors_premise_holds_on_the_installed_airflow(
        airflow_env: AirflowEnv, tmp_path: Path, configure: str, masked: bool) -> None:
    """consoles.py's premise: the supervisor's copy of a task's output, with the task's mask
    registered as Airflow registers it, is in the clear on a console whose logging Airflow
    core configured (scheduler, Celery worker) and masked under the Task SDK's (a pod). If
    Airflow starts masking the former, the finding and docs/airflow.md must change."""
    canary = "console-canary-4e8b1d"
    env = configured_home(airflow_env, tmp_path)
    got = subprocess.run([sys.executable, "-c", CONSOLE_COPY.format(configure=configure,
                                                                    canary=canary)],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert got.returncode == 0, got.stderr[-3000:]
    console = got.stdout + got.stderr
    assert "the task printed" in console
    assert (canary in console) is not masked, console[-2000:]
