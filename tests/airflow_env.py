"""A vault, a pipeline principal and an Airflow home with a migrated metadata database,
shared by the tests that go through Airflow's own paths."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from airflow_provider_mlsecrets.keys.softhsm import provision
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.settings import Settings

BACKEND = "airflow_provider_mlsecrets.secrets.backend.MLSecretsBackend"
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pw-canary-5d1e7a"
ENDPOINT = "https://registry.internal/canary-8c2f"
HARMLESS = "registry-canary-3b9a"


@dataclass
class AirflowEnv:
    home: Path
    vault: Vault
    admin: Caller
    pipeline_token: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, workers: bool = False,
            **extra: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **extra}
        kwargs = json.dumps({"token_file": str(self.pipeline_token)})
        if workers:
            env.update(AIRFLOW__WORKERS__SECRETS_BACKEND=BACKEND,
                       AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS=kwargs)
        else:
            env.update(AIRFLOW__SECRETS__BACKEND=BACKEND, AIRFLOW__SECRETS__BACKEND_KWARGS=kwargs)
        return subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True,
                              text=True, env=env, timeout=300, check=False)

    def audit(self, n: int = 10) -> list[tuple[str, str, str, dict[str, object]]]:
        return [(r.principal, r.path, r.outcome, r.context)
                for r in self.vault.audit.tail(self.admin, n) if r.action == "secret.inject"]


def dev_vault(home: Path, db_url: str | None = None) -> tuple[Vault, Caller]:
    """A SoftHSM2 token and a vault in ``home`` (its database at ``db_url``, else SQLite in
    ``home``), with the ``config.json`` that the API server or a task finds through
    ``MLSECRETS_HOME``; the vault and its engineer."""
    dev = provision(home, "mlsecrets")
    settings = Settings(home=home, db_url=db_url or f"sqlite:///{home / 'vault.db'}",
                        pkcs11_module=dev.module, pkcs11_pin_file=dev.pin_file,
                        softhsm2_conf=dev.conf)
    (home / "config.json").write_text(json.dumps(settings.as_config()))
    vault = Vault(settings)
    return vault, Caller(vault.initialise().admin_token)


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowEnv]:
    base = tmp_path_factory.mktemp("airflow")
    vault_home = base / "vault"
    vault, admin = dev_vault(vault_home)
    conn = {"conn_type": "postgres", "host": "db.internal", "login": "ml", "password": PASSWORD,
            "port": 5432, "schema": "features", "extra": {"sslmode": "require"}}
    vault.secrets.put(admin, "connections/mlsecrets_example_db", json.dumps(conn).encode())
    vault.secrets.put(admin, "connections/uri_db",
                      f"mysql://app:{PASSWORD}@mysql.internal:3306/app".encode())
    vault.secrets.put(admin, "variables/mlsecrets_example_endpoint", ENDPOINT.encode())
    vault.secrets.put(admin, "variables/model_registry_url", HARMLESS.encode())
    vault.secrets.put(admin, "connections/not_granted", b"postgres://u:vault-pw@h/db")
    vault.secrets.put(admin, "config/fernet_key", b"fernet-canary-value-7")
    token = vault.access.create_principal(admin, "airflow-pipeline", "pipeline")
    for pattern in ("connections/mlsecrets_*", "connections/uri_db", "variables/**",
                    "config/**"):
        vault.access.grant(admin, "airflow-pipeline", pattern, ["inject"])
    token_file = base / "pipeline.token"
    token_file.write_text(token)
    home = base / "airflow"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "MLSECRETS_"))}
    env.update(AIRFLOW_HOME=str(home), MLSECRETS_HOME=str(vault_home),
               AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "example_dags"),
               AIRFLOW__API_AUTH__JWT_SECRET="test-only-" + "0123456789abcdef" * 4)
    air = AirflowEnv(home=home, vault=vault, admin=admin, pipeline_token=token_file, env=env)
    migrated = air.run("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    yield air




# -- a whole deployment: API server (the only process with the vault), scheduler,
# dag-processor and a LocalExecutor whose task processes hold no vault settings ---------
MASKED_VALUE = "https://masked.internal/canary-2f7c"
JSON_LEAF = "json-leaf-canary-61ad"
DENIED_VALUE = "denied-var-canary-77e1"
DENIED_PASSWORD = "denied-db-canary-5b3c"
CLUSTER_DAGS = ("mlsecrets_denied_lookups", "mlsecrets_masked_values")


@dataclass
class Cluster:
    """Real Airflow processes sharing one ``airflow.cfg`` (the environment below):
    ``[secrets] backend`` is MLSecretsBackend everywhere, with no token anywhere; only the
    API server has ``MLSECRETS_HOME`` (the vault's PIN file, module and database)."""

    url: str
    home: Path
    vault: Vault
    admin: Caller
    env: dict[str, str]
    jwt_secret: str
    logs: dict[str, Path]

    def airflow(self, *args: str) -> subprocess.CompletedProcess[str]:
        got = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True,
                             text=True, env=self.env, timeout=300, check=False)
        assert got.returncode == 0, (got.stdout + got.stderr)[-3000:]
        return got

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "airflow.db", timeout=30)

    def run_dag(self, dag_id: str, timeout: float = 240) -> str:
        """Trigger ``dag_id`` and wait until its run finishes; the run id."""
        run_id = f"test__{uuid.uuid4().hex[:8]}"
        self.airflow("dags", "trigger", dag_id, "--run-id", run_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.closing(self.db()) as db:
                row = db.execute("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?",
                                 (dag_id, run_id)).fetchone()
            if row and row[0] in ("success", "failed"):
                return run_id
            for name, log in self.logs.items():
                assert self.processes[name].poll() is None, (
                    f"airflow {name} exited: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        pytest.fail(f"{dag_id} did not finish in {timeout} s")

    def task_log(self, dag_id: str, run_id: str, task_id: str, attempt: int) -> str:
        [path] = (self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" /
                  f"task_id={task_id}").glob(f"attempt={attempt}.log")
        return path.read_text(errors="replace")

    def output(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    process_env: dict[str, dict[str, str]] = field(default_factory=dict)  # as started


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def airflow_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    vault_home = base / "vault"
    vault, admin = dev_vault(vault_home)
    for path, value in (("variables/masked_endpoint", MASKED_VALUE),
                        ("variables/masked_json",
                         json.dumps({"api_key": JSON_LEAF, "region": "eu-west-9"})),
                        ("variables/denied_var", DENIED_VALUE),
                        ("connections/denied_db",
                         f"postgres://u:{DENIED_PASSWORD}@db.internal/db")):
        vault.secrets.put(admin, path, value.encode())
    vault.access.create_principal(admin, "dag:mlsecrets_masked_values", "pipeline")
    vault.access.grant(admin, "dag:mlsecrets_masked_values", "variables/masked_*", ["inject"])
    vault.access.create_principal(admin, "dag:mlsecrets_denied_lookups", "pipeline")
    vault.access.grant(admin, "dag:mlsecrets_denied_lookups", "variables/masked_endpoint",
                       ["inject"])
    dags = base / "dags"
    dags.mkdir()
    shutil.copy(ROOT / "tests" / "dags" / "mlsecrets_task_identity.py", dags)
    home = base / "airflow"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    jwt_secret = "test-only-" + secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLSECRETS_"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(dags), AIRFLOW__CORE__EXECUTOR="LocalExecutor",
               AIRFLOW__CORE__PARALLELISM="2",
               AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
               AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{url}/execution/",
               AIRFLOW__API_AUTH__JWT_SECRET=jwt_secret,
               AIRFLOW__SECRETS__BACKEND=BACKEND,  # shared: a relay where there is no vault
               AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="120",
               MLSECRETS_HOME=str(base / "no-vault-here"))  # no ~/.mlsecrets either
    cluster = Cluster(url=url, home=home, vault=vault, admin=admin, env=env,
                      jwt_secret=jwt_secret, logs={})
    cluster.airflow("db", "migrate")
    with control_plane(cluster, base, vault_home, port):
        _wait_until_ready(cluster)
        yield cluster


@contextlib.contextmanager
def control_plane(cluster: Cluster, base: Path, vault_home: Path, port: int,
                  workers_env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Run the API server (the only process given the vault, through ``MLSECRETS_HOME``),
    the scheduler and the dag-processor, each logging to ``base/NAME.log``; stop them all
    however the block ends. ``workers_env`` goes to every process but the API server (the
    LocalExecutor's task processes are the scheduler's children)."""
    commands = {"api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port)],
                "scheduler": ["scheduler"], "dag-processor": ["dag-processor"]}
    try:
        for name, command in commands.items():
            log = cluster.logs[name] = base / f"{name}.log"
            process_env = dict(cluster.env)
            if name == "api-server":
                process_env["MLSECRETS_HOME"] = str(vault_home)
            else:
                process_env.update(workers_env or {})
            cluster.process_env[name] = process_env
            with log.open("wb") as out:
                cluster.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "airflow", *command], env=process_env,
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)  # its own group: see below
        yield
    finally:
        for process in cluster.processes.values():
            process.terminate()
        for process in cluster.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        for process in cluster.processes.values():
            # what each left behind: LocalExecutor workers ignore SIGTERM and outlived the
            # scheduler (CI found them idle 40 minutes later)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


def _wait_until_ready(cluster: Cluster) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for name, process in cluster.processes.items():
            assert process.poll() is None, (
                f"airflow {name} exited: {cluster.output(name)[-3000:]}")
        try:
            up = urllib.request.urlopen(
                f"{cluster.url}/api/v2/monitor/health", timeout=2).status == 200
        except OSError:
            up = False
        if up:
            with contextlib.closing(cluster.db()) as db:
                parsed = {r[0] for r in db.execute(
                    "SELECT dag_id FROM dag WHERE is_paused = 0").fetchall()}
            if parsed >= set(CLUSTER_DAGS):
                return
        time.sleep(1)
    pytest.fail("the Airflow API server, scheduler and dag-processor were not ready in 180 s")
