"""The provider as Airflow shows it (providers, hooks, CLI group), the hook, connection
validation on write, and ``import-airflow`` from a real metastore."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.airflow_env import PASSWORD, AirflowEnv
from tests.airflow_env import airflow_env as airflow_env  # the fixture

MLSECRETS = [sys.executable, "-m", "airflow_provider_mlsecrets.cli.main"]


def admin_env(air: AirflowEnv) -> dict[str, str]:
    token = air.home.parent / "admin.token"
    token.write_text(air.admin.token or "")
    return {**air.env, "MLSECRETS_TOKEN_FILE": str(token)}


def mlsecrets(air: AirflowEnv, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MLSECRETS, *args], input=stdin, capture_output=True, text=True,
                          env=admin_env(air), timeout=120, check=False)


def test_airflow_lists_the_hook_connection_type_backend_and_cli(airflow_env: AirflowEnv) -> None:
    hooks = airflow_env.run("providers", "hooks", "-o", "json")
    assert hooks.returncode == 0, hooks.stderr[-2000:]
    [entry] = [h for h in json.loads(hooks.stdout) if h.get("connection_type") == "mlsecrets"]
    assert entry["class"] == "airflow_provider_mlsecrets.hooks.vault.MLSecretsHook"
    secrets = airflow_env.run("providers", "secrets", "-o", "json")
    assert "airflow_provider_mlsecrets.secrets.backend.MLSecretsBackend" in secrets.stdout
    status = airflow_env.run("mlsecrets", "status", "--json", **admin_env(airflow_env))
    assert status.returncode == 0, status.stderr[-2000:]
    assert json.loads(status.stdout)["you"] == "admin (security_engineer)"
    denied = airflow_env.run("mlsecrets", "secret", "get", "--reason", "in a test",
            "variables/model_registry_url",
                             MLSECRETS_TOKEN_FILE=str(airflow_env.pipeline_token))
    assert denied.returncode == 3


def test_connections_are_validated_before_they_are_stored(airflow_env: AirflowEnv,
                                                          tmp_path: Path) -> None:
    ok = mlsecrets(airflow_env, "secret", "put", "connections/validated", "--connection-uri",
                   "-", stdin=f"postgresql://etl:{PASSWORD}@pg.internal:5432/dw\n")
    assert ok.returncode == 0, ok.stderr
    conn_json = tmp_path / "conn.json"
    conn_json.write_text(json.dumps({"conn_type": "http", "host": "api.internal",
                                     "password": PASSWORD}))
    assert mlsecrets(airflow_env, "secret", "put", "connections/validated_json",
                     "--connection-json", str(conn_json)).returncode == 0
    conn_json.write_text('{"conn_type": "http", "port": "not-a-port"')
    bad = mlsecrets(airflow_env, "secret", "put", "connections/bad_json", "--connection-json",
                    str(conn_json))
    assert bad.returncode == 2 and "not a valid Airflow connection JSON" in bad.stderr
    literal = mlsecrets(airflow_env, "secret", "put", "connections/argv", "--connection-uri",
                        f"postgresql://etl:{PASSWORD}@pg/dw")
    assert literal.returncode == 2 and "never taken from the command line" in literal.stderr
    assert PASSWORD not in literal.stderr
    airflow_env.vault.access.grant(airflow_env.admin, "airflow-pipeline",
                                   "connections/validated", ["inject"])
    got = airflow_env.run("connections", "get", "validated", "-o", "json")
    [conn] = json.loads(got.stdout)
    assert (conn["conn_type"], conn["host"], conn["password"]) == ("postgres", "pg.internal",
                                                                   PASSWORD)


def test_import_airflow_copies_reads_back_and_only_then_deletes(airflow_env: AirflowEnv) -> None:
    add = airflow_env.run("connections", "add", "legacy_db", "--conn-uri",
                          "mysql://legacy:old-canary-pw@mysql.internal/app")
    assert add.returncode == 0, add.stderr[-2000:]
    assert airflow_env.run("variables", "set", "legacy_flag", "on-canary").returncode == 0
    dry = mlsecrets(airflow_env, "import-airflow", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert {(i["id"], i["result"]) for i in json.loads(dry.stdout)} >= {
        ("legacy_db", "would copy"), ("legacy_flag", "would copy")}
    real = mlsecrets(airflow_env, "import-airflow", "--delete-source", "--json")
    assert real.returncode == 0, real.stderr
    results = {i["id"]: i["result"] for i in json.loads(real.stdout)}
    assert results["legacy_db"] == "copied; deleted from the metastore"
    assert results["legacy_flag"] == "copied; deleted from the metastore"
    assert "old-canary-pw" not in real.stdout + real.stderr
    vault = airflow_env.vault
    assert vault.secrets.read(airflow_env.admin, "variables/legacy_flag",
            reason="in a test") == b"on-canary"
    # the metastore no longer has them; the backend serves them from the vault
    vault.access.grant(airflow_env.admin, "airflow-pipeline", "connections/legacy_db",
                       ["inject"])
    served = airflow_env.run("connections", "get", "legacy_db", "-o", "json")
    assert json.loads(served.stdout)[0]["password"] == "old-canary-pw"
    listed = airflow_env.run("connections", "list", "-o", "json")
    assert "legacy_db" not in listed.stdout  # 'list' reads the metastore only


def test_the_hook_in_a_task_process(airflow_env: AirflowEnv, tmp_path: Path) -> None:
    script = tmp_path / "hook.py"
    script.write_text(textwrap.dedent("""
        from airflow_provider_mlsecrets.hooks.vault import MLSecretsHook
        hook = MLSecretsHook()
        ok, message = hook.test_connection()
        value = hook.inject("variables/model_registry_url")
        secret = hook.secret("variables/model_registry_url")
        print(repr(secret), f"{secret}", secret.reveal() == value, value not in str([secret]))
        print(ok, message.split(" as ")[-1], len(value),
              [s.path for s in hook.list("variables/")][:1],
              [v.version for v in hook.versions("variables/model_registry_url")])
        try:
            hook.read("variables/model_registry_url", reason="in a test")
        except Exception as exc:
            print(type(exc).__name__)
    """))
    conn = {"conn_type": "mlsecrets", "extra": {"token_file": str(airflow_env.pipeline_token)}}
    env = {**airflow_env.env, "AIRFLOW_CONN_MLSECRETS_DEFAULT": json.dumps(conn)}
    airflow_env.vault.access.grant(airflow_env.admin, "airflow-pipeline", "variables/model_*",
                                   ["list"])
    got = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         timeout=120, check=False)
    assert got.returncode == 0, got.stderr[-3000:]
    lines = got.stdout.strip().splitlines()
    assert lines[-3] == "SecretValue(***) SecretValue(***) True True"
    assert lines[-2] == ("True airflow-pipeline (pipeline) 20 "
                         "['variables/model_registry_url'] [1]")
    assert lines[-1] == "AccessDenied"
    records = airflow_env.vault.audit.tail(airflow_env.admin, 5)
    assert [r.action for r in records][-2:] == ["secret.versions", "secret.read"]
    assert [r.action for r in records].count("secret.inject") >= 2  # secret() is audited too


def test_malformed_connection_uris_are_refused(airflow_env: AirflowEnv) -> None:
    for text in ("not a uri", "", "://nohost"):
        bad = mlsecrets(airflow_env, "secret", "put", "connections/bad_uri", "--connection-uri",
                        "-", stdin=text)
        assert bad.returncode == 2, (text, bad.stderr)
    empty_arg = mlsecrets(airflow_env, "secret", "put", "connections/bad_uri",
                          "--connection-uri", "")
    assert empty_arg.returncode == 2 and "internal error" not in empty_arg.stderr
