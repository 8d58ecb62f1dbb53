"""The service inside a real Airflow API server: Airflow users act through role bindings,
and a task's lookup that falls through the Execution API is answered as its DAG, verified
from the task's own token, so one DAG cannot obtain another DAG's secrets."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from airflow_provider_mlsecrets.service.audit import AuditView
from tests.airflow_env import (
    BACKEND,
    DENIED_PASSWORD,
    DENIED_VALUE,
    JSON_LEAF,
    MASKED_VALUE,
    ROOT,
    AirflowEnv,
    Cluster,
)
from tests.airflow_env import airflow_cluster as airflow_cluster  # the fixture
from tests.airflow_env import airflow_env as airflow_env  # the fixture
from tests.test_service import free_port, wait_for

A_PASSWORD = "scope-a-canary-41c9"
B_PASSWORD = "scope-b-canary-93d7"
USERS = "alice:admin,bob:viewer"


@pytest.fixture(scope="module")
def api_server(airflow_env: AirflowEnv) -> Iterator[str]:
    vault, admin = airflow_env.vault, airflow_env.admin
    for name, password in (("a", A_PASSWORD), ("b", B_PASSWORD)):
        vault.secrets.put(admin, f"connections/scope_{name}_db",
                          f"postgres://app:{password}@db.internal:5432/{name}".encode())
        vault.access.create_principal(admin, f"dag:mlsecrets_scope_{name}", "pipeline")
        vault.access.grant(admin, f"dag:mlsecrets_scope_{name}",
                           f"connections/scope_{name}_db", ["inject"])
    vault.access.create_principal(admin, "airflow-role:viewer", "viewer")
    vault.access.grant(admin, "airflow-role:viewer", "connections/**", ["list"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**airflow_env.env, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
           "AIRFLOW__SECRETS__BACKEND": BACKEND,  # the server's backend: no token of its own
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": USERS}
    server = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host",
                               "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"{url}/api/v2/monitor/health", server, "the Airflow API server")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def user_token(air: AirflowEnv, url: str, user: str) -> str:
    passwords = json.loads((air.home / "simple_auth_manager_passwords.json.generated"
                            ).read_text())
    got = httpx.post(f"{url}/auth/token", json={"username": user,
                                                "password": passwords[user]}, timeout=30)
    assert got.status_code == 201, got.text
    return str(got.json()["access_token"])


def test_airflow_users_act_through_their_bindings(airflow_env: AirflowEnv,
                                                  api_server: str) -> None:
    bob = user_token(airflow_env, api_server, "bob")
    headers = {"authorization": f"Bearer {bob}"}
    listed = httpx.get(f"{api_server}/mlsecrets/v1/list", headers=headers, timeout=30)
    assert listed.status_code == 200
    assert {s["path"] for s in listed.json()} >= {"connections/scope_a_db"}
    read = httpx.post(f"{api_server}/mlsecrets/v1/read/connections/scope_a_db",
                      headers=headers, json={}, timeout=30)
    assert read.status_code == 403 and A_PASSWORD not in read.text
    alice = user_token(airflow_env, api_server, "alice")  # an admin with no binding
    unbound = httpx.get(f"{api_server}/mlsecrets/v1/list",
                        headers={"authorization": f"Bearer {alice}"}, timeout=30)
    assert unbound.status_code == 401 and "no principal is bound" in unbound.text
    forged = httpx.get(f"{api_server}/mlsecrets/v1/list",
                       headers={"authorization": f"Bearer {bob[:-4]}AAAA"}, timeout=30)
    assert forged.status_code == 401
    records = airflow_env.vault.audit.tail(airflow_env.admin, 20)
    denied = [r for r in records if r.action == "secret.read"][-1]
    assert (denied.principal, denied.outcome, denied.context["verified_by"]) == (
        "airflow-role:viewer", "denied", "airflow")


def run_on_worker(air: AirflowEnv, api_server: str, home: Path, dag_id: str,
                  *extra: str) -> subprocess.CompletedProcess[str]:
    """``airflow dags test --use-executor`` on a worker that has no vault settings at all:
    no PIN, no PKCS#11 module, no database URL, no token, no secrets backend."""
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in air.env.items() if not k.startswith("MLSECRETS_")}
    env.update(MLSECRETS_HOME=str(home),
               AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "tests" / "dags"),
               AIRFLOW__CORE__EXECUTOR="LocalExecutor", AIRFLOW__CORE__PARALLELISM="1",
               AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{api_server}/execution/")
    return subprocess.run([sys.executable, "-m", "airflow", "dags", "test", dag_id,
                           "--use-executor", *extra], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def test_a_dag_gets_its_own_secret_and_never_another_dags(
        airflow_env: AirflowEnv, api_server: str, tmp_path: Path) -> None:
    empty_home = tmp_path / "worker-home"
    for name in ("a", "b"):
        got = run_on_worker(airflow_env, api_server, empty_home, f"mlsecrets_scope_{name}")
        assert got.returncode == 0, (got.stdout + got.stderr)[-4000:]
    db = sqlite3.connect(airflow_env.home / "airflow.db")
    results = {dag: json.loads(v if isinstance(v, str) else bytes(v).decode()) for dag, v in
               db.execute("SELECT dag_id, value FROM xcom WHERE key = 'return_value' AND "
                          "dag_id LIKE 'mlsecrets_scope_%'").fetchall()}
    assert results["mlsecrets_scope_a"]["own"] == len(A_PASSWORD)
    assert results["mlsecrets_scope_b"]["own"] == len(B_PASSWORD)
    assert results["mlsecrets_scope_a"]["other"] != "served"
    assert results["mlsecrets_scope_b"]["other"] != "served"
    records = [r for r in airflow_env.vault.audit.tail(airflow_env.admin, 60)
               if r.path.startswith("connections/scope_") and r.action == "secret.inject"]
    seen = {(r.principal, r.path, r.outcome) for r in records}
    assert {("dag:mlsecrets_scope_a", "connections/scope_a_db", "allowed"),
            ("dag:mlsecrets_scope_a", "connections/scope_b_db", "denied"),
            ("dag:mlsecrets_scope_b", "connections/scope_b_db", "allowed"),
            ("dag:mlsecrets_scope_b", "connections/scope_a_db", "denied")} <= seen
    for r in records:  # every lookup, allowed or denied, carries the verified task
        assert r.context["verified_by"] == "execution-api"
        assert r.context["dag_id"] == r.principal.removeprefix("dag:")
    logs = "".join(p.read_text(errors="replace") for p in
                   (airflow_env.home / "logs").rglob("*") if p.is_file())
    assert A_PASSWORD not in logs and B_PASSWORD not in logs
    assert not os.listdir(empty_home)


def test_injection_through_airflow_is_scoped_to_the_dag(
        airflow_env: AirflowEnv, api_server: str, tmp_path: Path) -> None:
    vault, admin = airflow_env.vault, airflow_env.admin
    vault.secrets.put(admin, "scoped/a_key", A_PASSWORD.encode())
    vault.secrets.put(admin, "scoped/b_key", B_PASSWORD.encode())
    vault.access.create_principal(admin, "dag:mlsecrets_scope_inject_a", "pipeline")
    vault.access.grant(admin, "dag:mlsecrets_scope_inject_a", "scoped/a_key", ["inject"])
    home = tmp_path / "worker-home"
    own = run_on_worker(airflow_env, api_server, home, "mlsecrets_scope_inject_a")
    assert own.returncode == 0, (own.stdout + own.stderr)[-4000:]
    other = run_on_worker(airflow_env, api_server, home, "mlsecrets_scope_inject_a", "-c",
                          json.dumps({"path": "scoped/b_key"}))
    assert other.returncode != 0
    assert B_PASSWORD not in other.stdout + other.stderr
    records = [(r.principal, r.path, r.outcome, r.context.get("verified_by"))
               for r in vault.audit.tail(admin, 40) if r.path.startswith("scoped/")
               and r.action == "secret.inject"]
    assert ("dag:mlsecrets_scope_inject_a", "scoped/a_key", "allowed",
            "execution-api") in records
    assert ("dag:mlsecrets_scope_inject_a", "scoped/b_key", "denied",
            "execution-api") in records
    assert not any(path == "scoped/b_key" and outcome == "allowed"
                   for _, path, outcome, _ in records)
    # nobody can plant a value behind secret:PATH in Airflow's metastore: the namespace is
    # the vault's, and a missing secret stops the lookup instead of falling through
    planted = airflow_env.run("variables", "set", "mlsecrets:scoped/planted", "planted-value")
    assert planted.returncode == 0, planted.stderr[-2000:]
    fell = run_on_worker(airflow_env, api_server, home, "mlsecrets_scope_inject_a", "-c",
                         json.dumps({"path": "scoped/planted"}))
    assert fell.returncode != 0
    db = sqlite3.connect(airflow_env.home / "airflow.db")
    assert not db.execute("SELECT 1 FROM xcom WHERE dag_id = 'mlsecrets_scope_inject_a' AND "
                          "run_id LIKE '%' AND value = '13'").fetchall()


# -- on a real deployment: API server, scheduler, dag-processor, LocalExecutor --------------
def _denied_records(cluster: Cluster, path: str) -> list[AuditView]:
    return [r for r in cluster.vault.audit.tail(cluster.admin, 200)
            if r.action == "secret.inject" and r.path == path and r.outcome == "denied"]


def test_a_denial_is_final_fast_and_quiet(airflow_cluster: Cluster) -> None:
    run_id = airflow_cluster.run_dag("mlsecrets_denied_lookups")
    with contextlib.closing(airflow_cluster.db()) as db:
        states = dict(db.execute(
            "SELECT task_id, state || ':' || try_number FROM task_instance WHERE dag_id = ? "
            "AND run_id = ?", ("mlsecrets_denied_lookups", run_id)).fetchall())
    assert states == {"variable": "failed:2", "connection": "failed:2"}
    for task_id, path, value in (("variable", "variables/denied_var", DENIED_VALUE),
                                 ("connection", "connections/denied_db", DENIED_PASSWORD)):
        for attempt in (1, 2):
            log = airflow_cluster.task_log("mlsecrets_denied_lookups", run_id, task_id,
                                           attempt)
            assert "Access denied" in log, log[-3000:]
            assert "not found" not in log.lower() and value not in log
            # the Task SDK retries only server errors: a retry would be another request
            assert "Retrying" not in log and "API_SERVER_ERROR" not in log
        records = [r for r in _denied_records(airflow_cluster, path)
                   if r.context.get("run_id") == run_id]
        assert [(r.principal, r.context["try_number"]) for r in records] == [
            ("dag:mlsecrets_denied_lookups", 1), ("dag:mlsecrets_denied_lookups", 2)]
    server = airflow_cluster.output("api-server")
    assert "Traceback" not in server and "Exception in ASGI application" not in server
    for attempt in (1, 2):  # one line for each refusal: who, what, why
        assert (f"dag:mlsecrets_denied_lookups (task variable, run {run_id}, try {attempt}) "
                "was refused the variable 'denied_var': access denied: no grant of inject "
                "covers variables/denied_var") in server
    assert DENIED_VALUE not in server and DENIED_PASSWORD not in server


def test_values_reach_the_workers_masker_without_vault_settings(
        airflow_cluster: Cluster) -> None:
    run_id = airflow_cluster.run_dag("mlsecrets_masked_values")
    log = airflow_cluster.task_log("mlsecrets_masked_values", run_id, "show", 1)
    events = [json.loads(line).get("event", "") for line in log.splitlines()]
    assert "variable says ***" in events and "json leaf says ***" in events, log[-3000:]
    assert "printed variable ***" in events
    assert MASKED_VALUE not in log and JSON_LEAF not in log
    allowed = [r for r in airflow_cluster.vault.audit.tail(airflow_cluster.admin, 50)
               if r.context.get("run_id") == run_id and r.outcome == "allowed"]
    assert {(r.principal, r.path, r.context["verified_by"]) for r in allowed} == {
        ("dag:mlsecrets_masked_values", "variables/masked_endpoint", "execution-api"),
        ("dag:mlsecrets_masked_values", "variables/masked_json", "execution-api")}


def test_the_api_server_reports_the_deployments_hazards_once_at_start_up(
        airflow_cluster: Cluster) -> None:
    """A LocalExecutor deployment is one trust domain: the API server says so at start-up,
    once, as 'mlsecrets doctor' does, without a traceback."""
    server = airflow_cluster.output("api-server")
    assert "mlsecrets doctor: hazard:" in server and "LocalExecutor" in server
    assert server.count("hazard(s)") == 1


def test_a_callable_that_prints_runs_on_a_supervised_worker(airflow_cluster: Cluster) -> None:
    """Issue 15, item 1: on a worker under Airflow 3's task supervisor, the callable's first
    print once killed its process ("ended without a result (exit code 1)"). It must succeed,
    its stdout and stderr in the task log, the injected value redacted."""
    import shutil
    import time

    dag_id = "mlsecrets_callable_prints"
    vault, admin = airflow_cluster.vault, airflow_cluster.admin
    vault.access.create_principal(admin, f"dag:{dag_id}", "pipeline")
    vault.access.grant(admin, f"dag:{dag_id}", "variables/masked_endpoint", ["inject"])
    shutil.copy(ROOT / "tests" / "dags" / f"{dag_id}.py", airflow_cluster.home.parent / "dags")
    airflow_cluster.airflow("dags", "reserialize")  # not the dag-processor's next scan
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.closing(airflow_cluster.db()) as db:
            if db.execute("SELECT 1 FROM dag WHERE dag_id = ? AND is_paused = 0",
                          (dag_id,)).fetchone():
                break
        time.sleep(1)
    else:
        pytest.fail(f"{dag_id} was not parsed in 120 s")
    run_id = airflow_cluster.run_dag(dag_id)
    log = airflow_cluster.task_log(dag_id, run_id, "shout", 1)
    with contextlib.closing(airflow_cluster.db()) as db:
        [(state,)] = db.execute("SELECT state FROM task_instance WHERE dag_id = ? AND "
                                "run_id = ? AND task_id = 'shout'", (dag_id, run_id)).fetchall()
    assert state == "success", log[-3000:]
    events = [json.loads(line).get("event", "") for line in log.splitlines()]
    assert "callable printed ***" in events and "callable warned" in events, log[-3000:]
    assert MASKED_VALUE not in log
    for name in ("scheduler", "api-server", "dag-processor"):  # this run's console lines;
        # another DAG's unredacted task output repeated there is issue 15, item 8
        mine = [line for line in airflow_cluster.output(name).splitlines() if run_id in line]
        assert not any(MASKED_VALUE in line for line in mine), name
