"""Leak canaries: one run through every surface (CLI, secrets backend, hook, injection
operator and decorator, rotation DAG, HTTP API) with canary secrets, then a scan of
everything written (every command's output, the Airflow task logs, the metadata database
with its XComs and rendered fields, the vault database, the service's log, exception
text) for the canaries' bytes. Core dumps are off in every process that holds one."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service._core import utcnow
from tests.airflow_env import ENDPOINT, HARMLESS, PASSWORD, ROOT, AirflowEnv
from tests.airflow_env import airflow_env as airflow_env  # the fixture
from tests.test_service import free_port, wait_for

MLSECRETS = [sys.executable, "-m", "airflow_provider_mlsecrets.cli.main"]
API_KEY = "sk-leakscan-canary-0c41"  # the injection DAGs read ml/openai/api_key
CLI_VALUE = "cli-leakscan-canary-7d22"
HTTP_VALUE = "http-leakscan-canary-91aa"
ROTATED_FIRST = "rotated-leakscan-canary-4be0"


def core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4]
    return "?"


def test_no_surface_writes_a_canary_anywhere(airflow_env: AirflowEnv, tmp_path: Path) -> None:
    air, vault, admin = airflow_env, airflow_env.vault, airflow_env.admin
    outputs: list[str] = []  # everything a surface printed that is not the asked-for value

    def keep(got: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        outputs.append(got.stdout + got.stderr)
        return got

    # set-up: the injection DAGs' secrets, a secret due for rotation, tokens in files
    vault.secrets.put(admin, "ml/openai/api_key", API_KEY.encode())
    vault.secrets.put(admin, "ml/short", b"q7z")
    vault.access.grant(admin, "airflow-pipeline", "ml/**", ["inject"])
    vault.secrets.put(admin, "leak/rotated", ROTATED_FIRST.encode())
    vault.rotation.set_policy(admin, "leak/rotated", RotationPolicy(
        schedule="30d", rotator="random", config={"length": 32}, grace="1h"),
        next_due=utcnow() - timedelta(seconds=1))
    tokens = {"admin": tmp_path / "admin.token", "pipeline": air.pipeline_token,
              "rotator": tmp_path / "rotator.token"}
    tokens["admin"].write_text(str(admin.token))
    tokens["rotator"].write_text(vault.access.create_principal(admin, "leak-rotator", "rotator"))
    vault.access.grant(admin, "leak-rotator", "**", ["rotate", "list", "audit"])

    def cli(token: str, *args: str, stdin: str = "", **extra: str
            ) -> subprocess.CompletedProcess[str]:
        env = {**air.env, "MLSECRETS_TOKEN_FILE": str(tokens[token]), **extra}
        return subprocess.run([*MLSECRETS, *args], input=stdin, capture_output=True, text=True,
                              env=env, timeout=120, check=False)

    # 1. the CLI: a write, a refused read, the audit trail; the one asked-for read is
    #    checked and left out of the scan
    assert keep(cli("admin", "secret", "put", "leak/cli", "--stdin", stdin=CLI_VALUE)
                ).returncode == 0
    assert keep(cli("pipeline", "secret", "get", "--reason", "in a test",
            "leak/cli")).returncode == 3
    assert keep(cli("admin", "audit", "export")).returncode == 0
    assert cli("admin", "secret", "get", "--reason", "in a test", "leak/cli").stdout == CLI_VALUE

    # 2.-3. the backend and hook (a task that prints what it got), the injection operator
    #       and decorator (tasks that print, return and raise their values)
    def dags_test(dag_id: str, folder: Path = ROOT / "tests" / "dags"
                  ) -> subprocess.CompletedProcess[str]:
        return keep(air.run("dags", "test", dag_id, workers=True,
                            AIRFLOW__CORE__DAGS_FOLDER=str(folder),
                            MLSECRETS_TOKEN_FILE=str(air.pipeline_token)))

    # (a task that prints its values would print them on `airflow dags test`'s console:
    # Airflow does not redact that copy of the log, docs/airflow.md "Known Airflow
    # behaviour"; the example DAG uses its values and prints only their sizes)
    assert dags_test("mlsecrets_example_connections", ROOT / "example_dags").returncode == 0
    hook_script = tmp_path / "hook.py"
    hook_script.write_text(
        "from airflow_provider_mlsecrets.hooks.vault import MLSecretsHook\n"
        "secret = MLSecretsHook().secret('ml/openai/api_key')\n"
        "print('the hook gave', secret, repr(secret), [secret], len(secret.reveal()))\n"
        "MLSecretsHook().inject('leak/not-granted')\n")
    hooked = keep(subprocess.run(
        [sys.executable, str(hook_script)], capture_output=True, text=True, timeout=120,
        check=False, env={**air.env, "MLSECRETS_TOKEN_FILE": str(air.pipeline_token)}))
    assert "the hook gave SecretValue(***)" in hooked.stdout and hooked.returncode != 0
    leaky = dags_test("mlsecrets_inject_leaky")
    assert leaky.returncode != 0  # it returned its value: refused, the task failed
    assert "contains an injected secret, so it was not stored" in leaky.stdout + leaky.stderr
    assert dags_test("mlsecrets_inject_raises").returncode != 0  # raised with the value
    assert dags_test("mlsecrets_inject_decorated").returncode == 0

    # 4. the rotation DAG: the old value is rotated away, the new one never printed
    rotated = keep(air.run("dags", "test", "mlsecrets_rotation", AIRFLOW__CORE__PARALLELISM="1",
                           MLSECRETS_TOKEN_FILE=str(tokens["rotator"])))
    assert rotated.returncode == 0, rotated.stdout[-2000:] + rotated.stderr[-2000:]
    rotated_now = vault.secrets.read(admin, "leak/rotated", reason="in a test").decode()
    assert rotated_now != ROTATED_FIRST

    # 5. the HTTP API: a read, a refused read and a malformed request through the service
    vault.secrets.put(admin, "leak/http", HTTP_VALUE.encode())
    port = free_port()
    server = subprocess.Popen([*MLSECRETS, "serve", "--port", str(port)], env=air.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/v1/openapi.json", server, "mlsecrets serve")
        served = cli("admin", "secret", "get", "--reason", "in a test", "leak/http",
                MLSECRETS_URL=url)
        assert served.stdout == HTTP_VALUE, served.stderr
        assert keep(cli("pipeline", "secret", "get", "--reason", "in a test", "leak/http",
                MLSECRETS_URL=url)
                    ).returncode == 3
        assert keep(cli("admin", "secret", "put", "leak/../x", "--stdin", stdin=HTTP_VALUE,
                        MLSECRETS_URL=url)).returncode == 2
        assert core_limit(server.pid) == "0"  # the service never dumps its memory
    finally:
        server.terminate()
        out, err = server.communicate(timeout=60)
        outputs.append(out + err)

    # 6. the scan: every output kept, every file Airflow and the vault wrote
    files = [p for base in (air.home, air.home.parent / "vault", tmp_path)
             for p in base.rglob("*") if p.is_file()]
    sources = {f"output {i}": text.encode() for i, text in enumerate(outputs)}
    sources.update({str(p): p.read_bytes() for p in files})
    written = b"".join(sources.values())
    assert len(files) > 10 and (air.home / "airflow.db") in files
    # the task logs are in what was kept (dags test writes them to its output): masked
    assert "api key is *** short is ***" in "".join(outputs)
    canaries = [API_KEY, PASSWORD, HARMLESS, ENDPOINT, CLI_VALUE, HTTP_VALUE, ROTATED_FIRST,
                rotated_now]
    found = {c: [name for name, data in sources.items() if c.encode() in data]
             for c in canaries if c.encode() in written}
    assert found == {}, f"canaries found in what the surfaces wrote: {found}"
    assert os.getpid() and core_limit(os.getpid()) == "0"  # this process opened the vault
