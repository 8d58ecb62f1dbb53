"""The production layout on real processes (docs/service.md, "The production layout"), for
tests/e2e/test_production_layout.py and ``scripts/demo``.

The API server with the plugin is the only process given the vault (``MLSECRETS_HOME``: the
PIN file, the PKCS#11 module, the vault's database URL). The scheduler, its LocalExecutor's
task processes and the dag-processor share its ``airflow.cfg`` (``[secrets] backend`` is
MLSecretsBackend everywhere, with no token) and have only ``MLSECRETS_URL``, the plugin's
address: a task's lookups go through the Execution API and are answered as its DAG
(``dag:DAG_ID``), and the rotation DAG asks the service to rotate with a ``rotator``
principal's token named by the ``mlsecrets_rotation`` connection. Airflow's metadata
database and the vault's are fresh PostgreSQL databases (dropped afterwards), or SQLite files
when no server is given. DAGs are triggered and watched through Airflow's REST API.

Alerts (docs/alerts.md): the vault's ``config.json`` (read by the API server only) names an
alert file through ``MLSECRETS_ALERT_RULES``; its notifier, when a receiver is given, is
Airflow's ``HttpNotifier`` on the Airflow connection ``siem_alerts`` (in Airflow's metastore),
so the API server's background evaluator delivers what the rules raise. The maintenance DAG
asks the service for a pass as the ``maintenance`` auditor named by the
``mlsecrets_maintenance`` connection. The API server's backend has no token of its own:
its own lookups (the notifier's connection) speak as ``<airflow process>``, which the vault
gives nothing, so a name it does not hold goes on to the metastore (recorded as not found).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import create_engine, inspect, select, table, text
from sqlalchemy.engine import make_url

from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.models import AlertCursor
from tests.airflow_env import BACKEND, ROOT, Cluster, _free_port, control_plane, dev_vault

DAG_FILES = (*sorted((ROOT / "example_dags").glob("*.py")),
             ROOT / "tests" / "dags" / "mlsecrets_production.py")
ROTATED = "ml/webhook/signing_key"
ROTATOR = "rotation-dag"
FOLLOWER = "mlsecrets_follow_rotation"
MAINTENANCE = "mlsecrets_maintenance"  # the DAG; paused at creation, unpaused by run_all
MAINTAINER = "maintenance"  # its principal, an auditor
ENGINEER = "oncall-engineer"  # a security engineer who reads through the service
ALERTS_CONN = "siem_alerts"  # the HTTP notifier's Airflow connection, in the metastore
NOTIFIER = "siem"
HTTP_NOTIFIER = "airflow.providers.http.notifications.http.HttpNotifier"
ALERT_ENDPOINT = "/mlsecrets/alerts"
#: each DAG's principal and what it may inject; nothing else is granted to a DAG
GRANTS = {
    "mlsecrets_example_connections": ("connections/mlsecrets_example_db",
                                      "variables/mlsecrets_example_endpoint"),
    "mlsecrets_example_training": ("ml/openai/api_key", "connections/mlsecrets_example_db"),
    "mlsecrets_training_callable": ("ml/openai/api_key", "connections/mlsecrets_example_db"),
    FOLLOWER: (ROTATED,),
}
#: triggered through the REST API, in this order; the follower runs on the rotation's event
TRIGGERED = ("mlsecrets_rotation", "mlsecrets_example_connections",
             "mlsecrets_example_training", "mlsecrets_training_callable")
DAGS = frozenset((*TRIGGERED, FOLLOWER, MAINTENANCE))
FINISHED = ("success", "failed")
T = TypeVar("T")


class LayoutError(RuntimeError):
    """The layout could not be set up, or a process of it stopped."""


@dataclass
class Production:
    """The running layout: its processes (``cluster``), its databases and what it stored."""

    cluster: Cluster
    base: Path
    databases: dict[str, str]  # "airflow", "vault" -> SQLAlchemy URL
    canaries: dict[str, str]  # what must appear nowhere -> its value
    worker_home: Path  # workers' MLSECRETS_HOME: an empty directory that must stay empty
    proof_dir: Path
    checkpoints: Path
    engineer_token: Path  # the security engineer's token file (base/secrets, never scanned)
    alert_rules: Path  # the alert file the API server's vault reads
    _token: str | None = field(default=None, repr=False)

    # -- Airflow's REST API, as an Airflow admin ---------------------------------------------
    def token(self) -> str:
        """A JWT from ``POST /auth/token`` for the simple auth manager's ``admin``."""
        if self._token is None:
            passwords = json.loads((self.cluster.home /
                                    "simple_auth_manager_passwords.json.generated").read_text())
            got = httpx.post(f"{self.cluster.url}/auth/token",
                             json={"username": "admin", "password": passwords["admin"]},
                             timeout=30)
            if got.status_code != 201:
                raise LayoutError(f"POST /auth/token answered {got.status_code}: {got.text}")
            self._token = str(got.json()["access_token"])
        return self._token

    def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        got = httpx.request(method, f"{self.cluster.url}/api/v2/{path}", timeout=30,
                            headers={"authorization": f"Bearer {self.token()}"}, **kwargs)
        if got.status_code not in (200, 201):
            raise LayoutError(f"{method} /api/v2/{path} answered {got.status_code}: {got.text}")
        return got.json()

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """``POST /api/v2/dags/DAG_ID/dagRuns``; the run's id."""
        run = self.rest("POST", f"dags/{dag_id}/dagRuns",
                        json={"logical_date": None, "conf": dict(conf or {})})
        return str(run["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.rest("GET", f"dags/{dag_id}/dagRuns")["dag_runs"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.rest("GET", f"dags/{dag_id}/dagRuns/{run_id}")["state"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """Each task instance's state, a mapped one as ``TASK[INDEX]``."""
        got = self.rest("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""):
                str(t["state"]) for t in got["task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        got = self.rest("GET", f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/"
                               "xcomEntries/return_value")
        value = got["value"]
        return json.loads(value) if isinstance(value, str) else value

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = 300) -> T:
        """Poll ``check()`` until it gives something truthy; a process that died stops it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            for name, process in self.cluster.processes.items():
                if process.poll() is not None:
                    raise LayoutError(f"airflow {name} exited ({process.returncode}) while "
                                      f"waiting for {what}:\n{self.cluster.output(name)[-3000:]}")
            time.sleep(1)
        raise LayoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def finished(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Wait for the run to finish; its state."""
        return self.wait(f"{dag_id} run {run_id}", lambda: (
            state if (state := self.run_state(dag_id, run_id)) in FINISHED else None), timeout)

    def read_as_engineer(self, path: str, reason: str) -> subprocess.CompletedProcess[str]:
        """``mlsecrets secret get PATH --reason REASON`` as the security engineer, a person
        on another host: only ``MLSECRETS_URL`` and a token file, an empty home."""
        home = self.base / "engineer-home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AIRFLOW", "MLSECRETS_"))}
        env.update(MLSECRETS_URL=f"{self.cluster.url}/mlsecrets", MLSECRETS_HOME=str(home),
                   MLSECRETS_TOKEN_FILE=str(self.engineer_token))
        return subprocess.run([str(Path(sys.executable).with_name("mlsecrets")), "secret",
                               "get", path, "--reason", reason], capture_output=True,
                              text=True, env=env, timeout=120, check=False)

    # -- where values could leak ---------------------------------------------------------
    def process_settings(self) -> dict[str, dict[str, str]]:
        """The ``MLSECRETS_*`` environment each process was started with (``/proc`` does not
        tell: Airflow's processes set their titles over it)."""
        return {name: {k: v for k, v in env.items() if k.startswith("MLSECRETS_")}
                for name, env in self.cluster.process_env.items()}

    def files(self) -> dict[str, str]:
        """Every file Airflow wrote (its home: the task logs, the dag-processor's logs,
        airflow.cfg), the consoles of the three processes, and the training proof."""
        paths = [p for root in (self.cluster.home, self.proof_dir) if root.exists()
                 for p in sorted(root.rglob("*")) if p.is_file()]
        paths += list(self.cluster.logs.values())
        return {str(p): p.read_text(errors="replace") for p in paths}

    def needles(self) -> dict[str, str]:
        """Each canary, and its base64 form."""
        out = dict(self.canaries)
        out.update({f"{name} (base64)": base64.b64encode(value.encode()).decode()
                    for name, value in self.canaries.items()})
        return out


def found(needles: Mapping[str, str], haystack: str) -> list[str]:
    return [name for name, value in needles.items() if value in haystack]


@dataclass
class Scan:
    rows: dict[str, int]  # table -> how many rows were read (so no scan is vacuous)
    hits: dict[str, list[str]]  # table -> the needles found in it


def scan_database(url: str, needles: Mapping[str, str]) -> Scan:
    """Every column of every table, as text (JSON as its text, bytes as they are and
    decompressed when they are zlib data), searched for each needle."""
    engine = create_engine(url)
    scan = Scan(rows={}, hits={})
    try:
        with engine.connect() as conn:
            for name in inspect(conn).get_table_names():
                rows = conn.execute(select(text("*")).select_from(table(name))).all()
                scan.rows[name] = len(rows)
                if got := found(needles, "\n".join(_as_text(v) for row in rows for v in row)):
                    scan.hits[name] = got
    finally:
        engine.dispose()
    return scan


def _as_text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        with contextlib.suppress(zlib.error):
            raw += b"\n" + zlib.decompress(raw)
        return raw.decode(errors="replace")
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else str(value)


# -- setting it up --------------------------------------------------------------------
def provision(cluster: Cluster, base: Path, alert_receiver: str | None) -> dict[str, str]:
    """What a security engineer does before the DAGs run: secrets, one ``dag:`` principal
    per DAG with narrow grants, a rotation policy that is due now, a ``rotator`` principal
    whose token the ``mlsecrets_rotation`` connection names, an auditor whose token the
    ``mlsecrets_maintenance`` connection names, a second security engineer, and the alert
    notifier's connection to ``alert_receiver``. The values and tokens stored."""
    vault, admin = cluster.vault, cluster.admin
    canaries = {name: f"{name}-canary-{secrets.token_hex(8)}"
                for name in ("db-password", "endpoint", "api-key", "signing-key")}
    conn = {"conn_type": "postgres", "host": "warehouse.internal", "login": "trainer",
            "password": canaries["db-password"], "port": 5432, "schema": "features"}
    vault.secrets.put(admin, "connections/mlsecrets_example_db", json.dumps(conn).encode())
    vault.secrets.put(admin, "variables/mlsecrets_example_endpoint",
                      canaries["endpoint"].encode())
    vault.secrets.put(admin, "ml/openai/api_key", canaries["api-key"].encode())
    vault.secrets.put(admin, ROTATED, canaries["signing-key"].encode())
    vault.rotation.set_policy(admin, ROTATED, RotationPolicy(
        "30d", "random", {"length": 48, "alphabet": "urlsafe"}, grace="1h"),
        next_due=datetime.now(timezone.utc))
    for dag_id, paths in GRANTS.items():
        vault.access.create_principal(admin, f"dag:{dag_id}", "pipeline")
        for path in paths:
            vault.access.grant(admin, f"dag:{dag_id}", path, ["inject"])
    token = vault.access.create_principal(admin, ROTATOR, "rotator")
    vault.access.grant(admin, ROTATOR, "**", ["rotate", "list", "audit"])
    (base / "secrets").mkdir(mode=0o700)
    canaries["rotator-token"] = token
    cluster.airflow("connections", "add", "mlsecrets_rotation", "--conn-type", "mlsecrets",
                    "--conn-extra", json.dumps({"token_file": str(
                        token_file(base, ROTATOR, token))}))
    token = vault.access.create_principal(admin, MAINTAINER, "auditor")  # audit on **
    canaries["maintenance-token"] = token
    cluster.airflow("connections", "add", MAINTENANCE, "--conn-type", "mlsecrets",
                    "--conn-extra", json.dumps({"token_file": str(
                        token_file(base, MAINTAINER, token))}))
    canaries["engineer-token"] = vault.access.create_principal(admin, ENGINEER,
                                                               "security_engineer")
    token_file(base, ENGINEER, canaries["engineer-token"])
    if admin.token:
        canaries["admin-token"] = admin.token
    if alert_receiver is not None:
        cluster.airflow("connections", "add", ALERTS_CONN, "--conn-uri", alert_receiver)
    return canaries


def token_file(base: Path, principal: str, token: str) -> Path:
    """``base/secrets/PRINCIPAL.token``, readable by its owner only."""
    path = base / "secrets" / f"{principal}.token"
    path.write_text(token)
    path.chmod(0o600)
    return path


def configure_alerts(vault_home: Path, alert_receiver: str | None) -> Path:
    """The alert file, named in the vault's ``config.json`` (which only the API server
    reads) with a short evaluation interval; every rule on with its defaults, delivered
    through Airflow's ``HttpNotifier`` when there is a receiver. The file's path."""
    rules = vault_home / "alerts.json"
    notifiers = [] if alert_receiver is None else [
        {"name": NOTIFIER, "class": HTTP_NOTIFIER,
         "kwargs": {"http_conn_id": ALERTS_CONN, "endpoint": ALERT_ENDPOINT}}]
    rules.write_text(json.dumps({"rules": {"human_read": {"paths": ["**"]}},
                                 "notifiers": notifiers,
                                 "delivery": {"retry": "5s", "max_retry": "1m"}}))
    config = vault_home / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()),
                                  "MLSECRETS_ALERT_RULES": str(rules),
                                  "MLSECRETS_ALERT_INTERVAL": "5"}))
    return rules


@contextlib.contextmanager
def databases(server_url: str | None, base: Path) -> Iterator[dict[str, str]]:
    """Two fresh databases on the PostgreSQL server (any database of it) at ``server_url``,
    Airflow's and the vault's, dropped afterwards; SQLite files in ``base`` without one."""
    if server_url is None:
        yield {"airflow": f"sqlite:///{base / 'airflow.db'}",
               "vault": f"sqlite:///{base / 'vault.db'}"}
        return
    server = make_url(server_url)
    name = f"mlsecrets_prod_{secrets.token_hex(4)}"
    names = {"airflow": name, "vault": f"{name}_vault"}
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for db in names.values():
                conn.execute(text(f'CREATE DATABASE "{db}"'))
        yield {kind: server.set(database=db).render_as_string(hide_password=False)
               for kind, db in names.items()}
    finally:
        with admin.connect() as conn:
            for db in names.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def production_layout(base: Path, server_url: str | None,
                      say: Callable[[str], None] = lambda _: None,
                      alert_receiver: str | None = None) -> Iterator[Production]:
    """Set the layout up in ``base``, start it, and stop it (and drop its databases)
    however the block ends. ``server_url``: a PostgreSQL server, or None for SQLite;
    ``alert_receiver``: the ``http://HOST:PORT`` alerts are posted to (none: raised only)."""
    with databases(server_url, base) as dbs:
        vault_home = base / "vault"
        vault, admin = dev_vault(vault_home, dbs["vault"])
        try:
            say(f"vault: a SoftHSM2 token and PIN in {vault_home}, its database "
                f"{make_url(dbs['vault']).database}")
            dags = base / "dags"
            dags.mkdir()
            for dag_file in DAG_FILES:
                shutil.copy(dag_file, dags)
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            worker_home = base / "worker-home"  # no ~/.mlsecrets either
            worker_home.mkdir()
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("AIRFLOW", "MLSECRETS_"))}
            env.update(AIRFLOW_HOME=str(base / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                       AIRFLOW__CORE__DAGS_FOLDER=str(dags),
                       AIRFLOW__CORE__EXECUTOR="LocalExecutor", AIRFLOW__CORE__PARALLELISM="2",
                       AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
                       AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{url}/execution/",
                       AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
                       AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
                       AIRFLOW__API__SECRET_KEY=secrets.token_hex(32),
                       AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=dbs["airflow"],
                       AIRFLOW__SECRETS__BACKEND=BACKEND,  # the same airflow.cfg everywhere
                       AIRFLOW__SECRETS__BACKEND_KWARGS=json.dumps({"config_prefix": None}),
                       AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="120",
                       MLSECRETS_HOME=str(worker_home))
            if server_url is not None:  # psycopg 3 is sync and async: no asyncpg needed
                env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = dbs["airflow"]
            cluster = Cluster(url=url, home=base / "airflow", vault=vault, admin=admin, env=env,
                              jwt_secret=env["AIRFLOW__API_AUTH__JWT_SECRET"], logs={})
            say(f"Airflow's metadata database: {make_url(dbs['airflow']).database}")
            cluster.airflow("db", "migrate")
            canaries = provision(cluster, base, alert_receiver)
            prod = Production(cluster=cluster, base=base, databases=dbs, canaries=canaries,
                              worker_home=worker_home, proof_dir=base / "training-proof",
                              checkpoints=base / "checkpoints",
                              engineer_token=base / "secrets" / f"{ENGINEER}.token",
                              alert_rules=configure_alerts(vault_home, alert_receiver))
            say("starting the API server, the scheduler and the dag-processor")
            checkpoints = base / "checkpoints"  # where the rotation DAG publishes them
            checkpoints.mkdir(mode=0o700)
            workers_env = {"MLSECRETS_URL": f"{url}/mlsecrets",
                           "MLSECRETS_AUDIT_CHECKPOINT_URL": checkpoints.as_uri() + "/"}
            with control_plane(cluster, base, vault_home, port, workers_env=workers_env):
                prod.wait("the API server and the DAGs", lambda: _ready(prod), timeout=240)
                yield prod
        finally:
            engine_for(dbs["vault"]).dispose()  # before its database is dropped


def _ready(prod: Production) -> bool:
    try:
        if httpx.get(f"{prod.cluster.url}/api/v2/monitor/health", timeout=5).status_code != 200:
            return False
        listed = prod.rest("GET", "dags", params={"limit": 100})["dags"]
    except (httpx.HTTPError, OSError, ValueError, KeyError, LayoutError):  # not up yet
        return False
    if not ({d["dag_id"] for d in listed} >= DAGS and
            {d["dag_id"] for d in listed if not d["is_paused"]} >= DAGS - {MAINTENANCE}):
        return False
    # the API server's evaluator has made its first pass (it seeds: the past raises
    # nothing), so every record from here on is evaluated
    with prod.cluster.vault.core.transaction() as session:
        return session.scalars(select(AlertCursor)).first() is not None


@dataclass
class Runs:
    ids: dict[str, str]  # each DAG's run that this made happen (the follower's on the event)
    rotation: list[str]  # every run of the rotation DAG, its scheduled one(s) too, finished
    maintenance: list[str]  # every run of the maintenance DAG that started, finished


def run_all(prod: Production) -> Runs:
    """Trigger every DAG of :data:`TRIGGERED` through the REST API and wait for each run,
    for every run of the rotation DAG (it is ``@hourly`` and unpaused, so it also runs on
    its own schedule), then for the follower's run on the rotation's asset event. Then
    unpause the maintenance DAG, trigger it, wait for that run, and pause it again (it runs
    every minute): every run of it that started is waited for; one queued behind a pause
    never starts."""
    ids = {dag_id: prod.trigger(dag_id, {"out_dir": str(prod.proof_dir)}
                                if dag_id == "mlsecrets_example_training" else None)
           for dag_id in TRIGGERED}
    for dag_id, run_id in ids.items():
        prod.finished(dag_id, run_id)
    rotation = [r["dag_run_id"] for r in prod.runs("mlsecrets_rotation")]
    for run_id in rotation:
        prod.finished("mlsecrets_rotation", run_id)
    ids[FOLLOWER] = prod.wait(f"a run of {FOLLOWER}", lambda: next(
        (r["dag_run_id"] for r in prod.runs(FOLLOWER)), None), timeout=180)
    prod.finished(FOLLOWER, ids[FOLLOWER])
    prod.rest("PATCH", f"dags/{MAINTENANCE}", json={"is_paused": False})
    ids[MAINTENANCE] = prod.trigger(MAINTENANCE)
    prod.finished(MAINTENANCE, ids[MAINTENANCE])
    prod.rest("PATCH", f"dags/{MAINTENANCE}", json={"is_paused": True})

    def settled(run_id: str) -> str:
        return prod.wait(f"{MAINTENANCE} run {run_id}", lambda: (
            state if (state := prod.run_state(MAINTENANCE, run_id)) != "running" else None))

    started = [run_id for run_id in (r["dag_run_id"] for r in prod.runs(MAINTENANCE))
               if settled(run_id) != "queued"]
    return Runs(ids=ids, rotation=rotation, maintenance=started)
