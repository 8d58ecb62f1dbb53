"""The rotation DAG on a worker that holds no vault: its tasks ask the vault service
(``mlsecrets serve`` here, the API server's plugin in production) with a rotator's token.
Rotations started anywhere else emit the same asset events as the DAG's, and a hook or a
DAG with no vault configured says what to set and creates nothing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from airflow_provider_mlsecrets.errors import ConfigurationError
from airflow_provider_mlsecrets.rotation.dag import secret_asset
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service._core import utcnow
from tests.airflow_env import ROOT, AirflowEnv, Cluster
from tests.airflow_env import airflow_cluster as airflow_cluster  # the fixtures
from tests.airflow_env import airflow_env as airflow_env
from tests.test_service import MLSECRETS, free_port, wait_for

VIA_DAG = ["svc/api_token", "svc/webhook"]
VIA_CLI = "svc/cli_token"
FOLLOWER = '''
from airflow.sdk import dag, task
from airflow_provider_mlsecrets.rotation.dag import secret_asset

@dag(schedule=[secret_asset("{path}")], catchup=False)
def follows_{name}():
    @task
    def reconnect(): ...
    reconnect()

follows_{name}()
'''


@dataclass
class Setup:
    air: AirflowEnv
    url: str
    rotator_token: Path
    admin_token: Path
    worker_home: Path  # MLSECRETS_HOME of the worker: empty, and must stay so

    def worker_env(self, **extra: str) -> dict[str, str]:
        """A worker's environment: Airflow, the service's URL and a token file; no HSM, no
        vault database, no vault home."""
        env = {k: v for k, v in self.air.env.items() if not k.startswith("MLSECRETS_")}
        env.update({"MLSECRETS_URL": self.url, "MLSECRETS_HOME": str(self.worker_home),
                    "MLSECRETS_TOKEN_FILE": str(self.rotator_token), **extra})
        return env

    def airflow(self, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True,
                              text=True, env=env, timeout=300, check=False)

    def events(self) -> list[tuple[str, dict[str, object]]]:
        with sqlite3.connect(self.air.home / "airflow.db") as db:
            rows = db.execute("SELECT a.uri, e.extra FROM asset_event e JOIN asset a "
                              "ON a.id = e.asset_id WHERE a.uri LIKE 'mlsecrets://svc/%' "
                              "ORDER BY e.id").fetchall()
        return [(uri, json.loads(extra)) for uri, extra in rows]


@pytest.fixture(scope="module")
def setup(airflow_env: AirflowEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    vault, admin = airflow_env.vault, airflow_env.admin
    policy = RotationPolicy(schedule="30d", rotator="random", config={"length": 32},
                            grace="1h")
    for path in [*VIA_DAG, VIA_CLI]:
        vault.secrets.put(admin, path, f"first-{path}".encode())
        vault.rotation.set_policy(admin, path, policy, next_due=(
            utcnow() - timedelta(seconds=1) if path in VIA_DAG else None))
    base = tmp_path_factory.mktemp("rotation-service")
    rotator = base / "rotator.token"
    rotator.write_text(vault.access.create_principal(admin, "svc-rotator", "rotator"))
    vault.access.grant(admin, "svc-rotator", "**", ["rotate", "list", "audit"])
    admin_token = base / "admin.token"
    assert admin.token is not None
    admin_token.write_text(admin.token)
    worker_home = base / "worker-home"
    worker_home.mkdir()
    port = free_port()
    server = subprocess.Popen([*MLSECRETS, "serve", "--port", str(port)], env=airflow_env.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/v1/openapi.json", server, "mlsecrets serve")
        yield Setup(air=airflow_env, url=url, rotator_token=rotator, admin_token=admin_token,
                    worker_home=worker_home)
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_the_rotation_dag_rotates_through_the_service_with_no_vault_on_the_worker(
        setup: Setup) -> None:
    vault, admin = setup.air.vault, setup.air.admin
    got = setup.airflow("dags", "test", "mlsecrets_rotation",
                        env=setup.worker_env(AIRFLOW__CORE__PARALLELISM="1"))
    output = got.stdout + got.stderr
    assert got.returncode == 0, output[-4000:]
    for path in VIA_DAG:
        assert [v.version for v in vault.secrets.versions(admin, path)] == [1, 2]
        assert vault.secrets.read(admin, path, reason="in a test").decode() not in output
    assert [v.version for v in vault.secrets.versions(admin, VIA_CLI)] == [1]
    assert "audit chain verified" in output
    # the events come from the DAG's tasks (outlet_events), once each: the service was
    # told not to announce them again (mapped tasks finish in either order)
    assert sorted((uri, extra["version"]) for uri, extra in setup.events()) == sorted(
        (secret_asset(p).uri, 2) for p in VIA_DAG)
    records = [r for r in vault.audit.tail(admin, 200) if r.principal == "svc-rotator"]
    assert {"rotation.due", "rotation.begin", "rotation.finish", "audit.verify",
            "rotation.retain"} <= {r.action for r in records}
    # over HTTP the worker's DAG is a claim, recorded as such beside the verified token
    assert {r.context.get("claimed_dag_id") for r in records} == {"mlsecrets_rotation"}
    assert {r.context.get("dag_id") for r in records} == {None}
    assert list(setup.worker_home.iterdir()) == []  # no vault, no token, no key was made


def test_a_cli_rotation_emits_the_dags_asset_event_and_queues_its_followers(
        setup: Setup, tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "follows.py").write_text(FOLLOWER.format(path=VIA_CLI, name="cli_token"))
    env = {**setup.air.env, "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False"}
    parsed = setup.airflow("dags", "reserialize", env=env)
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    rotated = subprocess.run([*MLSECRETS, "rotate", VIA_CLI], capture_output=True, text=True,
                             env={**env, "MLSECRETS_TOKEN_FILE": str(setup.admin_token)},
                             timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert rotated.returncode == 0, rotated.stderr
    assert "asset event" in rotated.stdout and secret_asset(VIA_CLI).uri in rotated.stdout
    [(_, extra)] = [e for e in setup.events() if e[0] == secret_asset(VIA_CLI).uri]
    assert extra == {"path": VIA_CLI, "version": 2}  # what the DAG's events carry
    with sqlite3.connect(setup.air.home / "airflow.db") as db:
        queued = db.execute("SELECT target_dag_id FROM asset_dag_run_queue").fetchall()
    assert ("follows_cli_token",) in queued


def test_a_rotation_through_a_plain_service_says_it_emitted_no_event(setup: Setup) -> None:
    rotated = subprocess.run([*MLSECRETS, "rotate", VIA_CLI], capture_output=True, text=True,
                             env=setup.worker_env(MLSECRETS_TOKEN_FILE=str(setup.admin_token)),
                             timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert rotated.returncode == 0, rotated.stderr
    assert "not Airflow's API server" in rotated.stdout
    assert list(setup.worker_home.iterdir()) == []


def _bare_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSECRETS_", "AIRFLOW"))}
    env.update(HOME=str(tmp_path / "home"), AIRFLOW_HOME=str(tmp_path / "airflow"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "example_dags"))
    return env


def test_the_rotation_dag_with_no_vault_configured_says_what_to_set(tmp_path: Path) -> None:
    env = _bare_env(tmp_path)
    migrated = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"],
                              capture_output=True, text=True, env=env, timeout=300, check=False)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    got = subprocess.run([sys.executable, "-m", "airflow", "dags", "test",
                          "mlsecrets_rotation"], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    output = got.stdout + got.stderr
    assert "the rotation DAG is not configured: no vault is configured" in output
    assert "set MLSECRETS_URL" in output
    assert "PermissionError" not in output
    assert not (tmp_path / "home" / ".mlsecrets").exists()  # nothing was created


def test_a_hook_with_no_vault_configured_creates_none(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_mlsecrets.hooks.vault import MLSecretsHook

    for name in [k for k in os.environ if k.startswith("MLSECRETS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MLSECRETS_HOME", str(tmp_path / "nowhere"))
    hook = MLSecretsHook(mlsecrets_conn_id="no_such_connection")
    with pytest.raises(ConfigurationError, match=r"no vault is configured .* nothing was "
                                                 r"created"):
        _ = hook.vault
    ok, message = hook.test_connection()
    assert not ok and "MLSECRETS_URL" in message
    assert not (tmp_path / "nowhere").exists()


def test_the_api_servers_plugin_announces_what_it_rotates(airflow_cluster: Cluster) -> None:
    """Inside the API server the service has Airflow's metadata database: it looks for
    the asset (no DAG follows this one, so it says so) instead of disclaiming it."""
    vault, admin = airflow_cluster.vault, airflow_cluster.admin
    path = "svc/plugin_token"
    vault.secrets.put(admin, path, b"first")
    vault.rotation.set_policy(admin, path, RotationPolicy(schedule="30d", rotator="random"))
    token = vault.access.create_principal(admin, "plugin-rotator", "rotator")
    vault.access.grant(admin, "plugin-rotator", "svc/**", ["rotate", "list"])
    got = httpx.post(f"{airflow_cluster.url}/mlsecrets/v1/rotate/{path}", json={},
                     headers={"authorization": f"Bearer {token}"}, timeout=60)
    assert got.status_code == 200, got.text
    assert got.json()["result"] == "rotated"
    assert got.json()["asset_event"] == f"no asset event: no DAG is scheduled on " \
                                        f"{secret_asset(path).uri}"
