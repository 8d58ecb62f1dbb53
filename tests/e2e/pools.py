"""Worker pools that share nothing, on real processes: the harness of
tests/e2e/test_hostile_dag_pools.py (docs/service.md, "Isolation between DAGs").

The control plane (API server with the plugin, scheduler, dag-processor) runs as this
process's user (root) from a 0700 directory: only the API server has ``MLSECRETS_*``, the
PIN and ``[secrets] backend``; the API server and the scheduler hold the Ed25519 JWT signing
key. Each pool is a Celery worker as its own Unix user with its own RabbitMQ user, allowed
only its own queue and exchange on a vhost of this run, and its own Redis ACL user on a
private Redis (``default`` off), allowed only Celery's result keys. The metadata database is
a PostgreSQL server of the session that checks passwords (tests/pg_server.py), so a pool
cannot log in to it the way it could to the machine's trusting server.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess  # nosec B404: the test starts the real processes
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from airflow_provider_mlsecrets.service import Caller, Vault
from tests.airflow_env import BACKEND, ROOT, dev_vault
from tests.pg_server import ScramPostgres
from tests.test_service import free_port

POOLS = ("a", "b")
QUEUE = {"a": "mlsecrets-pool-a", "b": "mlsecrets-pool-b"}
UNIX_USER = {"a": "mlsec-pool-a", "b": "mlsec-pool-b"}
DAG_FILE = ROOT / "tests" / "dags" / "mlsecrets_pool_dags.py"


def unavailable(message: str) -> None:
    """Fail in CI (this test is part of the default run there), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the worker-pool isolation test", pytrace=False)
    pytest.skip(message)


def require_prerequisites() -> None:
    if os.geteuid() != 0:
        unavailable("the worker-pool test creates Unix users and broker users: run it as root")
    for tool in ("useradd", "rabbitmqctl", "redis-server"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed")
    try:
        import airflow.providers.celery  # noqa: F401
    except ImportError:
        unavailable("apache-airflow-providers-celery is not installed (the 'test' extra)")
    listed = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True,
                            text=True, timeout=60, check=False)
    if listed.returncode != 0:
        unavailable(f"rabbitmqctl cannot reach RabbitMQ: {listed.stderr.strip()[:300]}")


def unix_user(name: str) -> pwd.struct_passwd:
    """A system user with no home and no shell, created once."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", name], check=True, timeout=60)
        return pwd.getpwnam(name)


def rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()}")


@dataclass
class Broker:
    """A vhost of this run; the scheduler's user may do anything on it, each pool's user
    only its own queue (and the exchange of the same name that Celery routes through)."""

    vhost: str
    users: dict[str, str]  # name -> password
    port: int = 5672

    def url(self, user: str) -> str:
        return f"amqp://{user}:{self.users[user]}@127.0.0.1:{self.port}/{self.vhost}"


@contextlib.contextmanager
def broker(run: str) -> Iterator[Broker]:
    vhost = f"mlsecrets-e2e-{run}"
    users = {f"sched-{run}": secrets.token_hex(16)}
    users.update({f"pool-{p}-{run}": secrets.token_hex(16) for p in POOLS})
    rabbitmqctl("add_vhost", vhost)
    try:
        for user, password in users.items():
            rabbitmqctl("add_user", user, password)
        rabbitmqctl("set_permissions", "-p", vhost, f"sched-{run}", ".*", ".*", ".*")
        for p in POOLS:
            only = f"^{QUEUE[p]}$"  # configure, write, read: the queue and its exchange
            rabbitmqctl("set_permissions", "-p", vhost, f"pool-{p}-{run}", only, only, only)
        yield Broker(vhost, users)
    finally:
        with contextlib.suppress(RuntimeError):
            rabbitmqctl("delete_vhost", vhost)
        for user in users:
            with contextlib.suppress(RuntimeError):
                rabbitmqctl("delete_user", user)


@dataclass
class Results:
    """A private Redis for Celery's results: no ``default`` user; the scheduler reads and
    writes every result key; a pool may only get, set and publish a result whose id it
    names (Celery's ``celery-task-meta-<uuid>``), never list, scan or listen to them."""

    port: int
    users: dict[str, str]

    def url(self, user: str) -> str:
        return f"redis://{user}:{self.users[user]}@127.0.0.1:{self.port}/0"


POOL_REDIS_RULES = ("~celery-task-meta-* &celery-task-meta-* -@all +get +set +setex +psetex "
                    "+publish +multi +exec +ping +auth")


@contextlib.contextmanager
def results(run: str, base: Path) -> Iterator[Results]:
    users = {f"sched-{run}": secrets.token_hex(16)}
    users.update({f"pool-{p}-{run}": secrets.token_hex(16) for p in POOLS})
    port = free_port()
    lines = [f"port {port}", "bind 127.0.0.1", 'save ""', "appendonly no",
             f"dir {base}", "user default off",
             f"user sched-{run} on >{users[f'sched-{run}']} ~* &* +@all"]
    lines += [f"user pool-{p}-{run} on >{users[f'pool-{p}-{run}']} {POOL_REDIS_RULES}"
              for p in POOLS]
    conf = base / "redis.conf"
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o600)
    server = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port, username=f"sched-{run}",
                             password=users[f"sched-{run}"])
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the private Redis did not start") from None
                time.sleep(0.2)
        yield Results(port, users)
    finally:
        server.terminate()
        server.wait(timeout=30)


@dataclass
class Cluster:
    """The running deployment, and where each piece keeps its output."""

    base: Path
    control: Path
    api: str
    vault: Vault
    admin: Caller
    db: ScramPostgres
    db_name: str
    db_user: str
    broker: Broker
    results: Results
    pool_home: dict[str, Path]
    outputs: list[Path] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str],
              user: pwd.struct_passwd | None = None, cwd: Path | None = None
              ) -> subprocess.Popen[bytes]:
        out = self.control / "out" / f"{name}.log"
        out.parent.mkdir(exist_ok=True)
        handle: IO[bytes] = out.open("wb")
        self.outputs.append(out)
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   cwd=cwd or self.base, start_new_session=True, **kwargs)
        handle.close()
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

    def task_logs(self, pool: str) -> str:
        """Pool ``pool``'s task logs, for a failure message."""
        return "\n".join(f"== {p}\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted((self.pool_home[pool] / "logs").rglob("*.log")))

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.db.connect(dbname=self.db_name) as conn:
            return list(conn.execute(sql, params).fetchall())


def _others_can_reach(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def pool_python(base: Path) -> tuple[str, dict[str, str]]:
    """An interpreter the pools' users can run, and the environment it needs. The project's
    virtualenv may sit on an interpreter under a private home (pyenv in a 0700 /root here):
    then that interpreter is copied (without its own site-packages and tests) and told to
    add the project's site-packages, .pth files included (the editable install, the entry
    points), so the pools run exactly the code the control plane runs."""
    prefix = Path(sys.base_prefix)
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    if _others_can_reach(prefix / "bin") and _others_can_reach(Path(ours)):
        return sys.executable, {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    target = base / "python"
    (target / "bin").mkdir(parents=True)
    shutil.copy2(prefix / "bin" / version, target / "bin" / version)
    shutil.copytree(prefix / "lib" / version, target / "lib" / version,
                    ignore=shutil.ignore_patterns("site-packages", "test", "tests",
                                                  "__pycache__", "idlelib", "tkinter",
                                                  "turtledemo", "ensurepip"))
    for library in prefix.joinpath("lib").glob("libpython*.so*"):
        shutil.copy2(library, target / "lib" / library.name)
    site_dir = target / "lib" / version / "site-packages"
    site_dir.mkdir()
    (site_dir / "mlsecrets_project.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n")
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    if not _others_can_reach(Path(ours)):
        unavailable(f"the project's site-packages ({ours}) cannot be read by other users")
    return str(target / "bin" / version), {"LD_LIBRARY_PATH": str(target / "lib")}


def base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(AIRFLOW__CORE__LOAD_EXAMPLES="False", PYTHONDONTWRITEBYTECODE="1",
               AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
               AIRFLOW__CELERY__WORKER_ENABLE_REMOTE_CONTROL="False",
               AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT="3600")
    return env


def ed25519_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


@contextlib.contextmanager
def cluster(db: ScramPostgres) -> Iterator[Cluster]:
    """Start everything; stop everything it started, whatever happens."""
    run = secrets.token_hex(4)
    users = {p: unix_user(UNIX_USER[p]) for p in POOLS}
    # under /tmp, not pytest's 0700 tmp_path: the pools' users must reach their own homes
    base = Path(tempfile.mkdtemp(prefix="mlsecrets-pools-", dir="/tmp"))
    base.chmod(0o711)
    control = base / "control"
    control.mkdir(mode=0o700)
    dags = base / "dags"
    dags.mkdir(mode=0o755)
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)
    (dags / DAG_FILE.name).chmod(0o644)
    homes: dict[str, Path] = {}
    for p in POOLS:
        homes[p] = base / f"pool-{p}"
        homes[p].mkdir(mode=0o700)
        os.chown(homes[p], users[p].pw_uid, users[p].pw_gid)
    db_name, db_user, db_password = f"airflow_{run}", f"airflow_{run}", secrets.token_hex(16)
    db.create_role(db_user, db_password)
    with db.connect() as conn:
        conn.execute(f'CREATE DATABASE "{db_name}" OWNER "{db_user}"')
    try:
        with broker(run) as amqp_broker, results(run, control) as redis_results:
            vault, admin = dev_vault(control / "vault")
            key = control / "jwt-ed25519.pem"
            ed25519_key(key)
            port = free_port()
            api = f"http://127.0.0.1:{port}"
            air = Cluster(base=base, control=control, api=api, vault=vault, admin=admin,
                          db=db, db_name=db_name, db_user=db_user, broker=amqp_broker,
                          results=redis_results, pool_home=homes)
            try:
                _start(air, run, key, port, dags, users, db_password)
                yield air
            finally:
                air.stop()
    finally:
        with contextlib.suppress(Exception), db.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{db_user}"')
        if os.environ.get("MLSECRETS_E2E_KEEP"):  # for a post-mortem
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def _start(air: Cluster, run: str, key: Path, port: int, dags: Path,
           users: dict[str, pwd.struct_passwd], db_password: str) -> None:
    db_url = (f"postgresql+psycopg://{air.db_user}:{db_password}@{air.db.host}:{air.db.port}/"
              f"{air.db_name}")
    control = {**base_env(), "HOME": str(air.control), "AIRFLOW_HOME": str(air.control / "air"),
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": db_url,  # psycopg 3 does both
               "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
               "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
               "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{air.api}/execution/",
               "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
               "AIRFLOW__API_AUTH__JWT_PRIVATE_KEY_PATH": str(key),
               "AIRFLOW__API_AUTH__JWT_ALGORITHM": "EdDSA",
               "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
               "AIRFLOW__CELERY__BROKER_URL": air.broker.url(f"sched-{run}"),
               "AIRFLOW__CELERY__RESULT_BACKEND": air.results.url(f"sched-{run}"),
               "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
               "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5"}
    migrated = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=control,
                              capture_output=True, text=True, timeout=300, check=False)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    # the vault's settings, the PIN and the secrets backend: the API server's, nobody else's
    server_env = {**control, "MLSECRETS_HOME": str(air.control / "vault"),
                  "AIRFLOW__SECRETS__BACKEND": BACKEND}
    air.start("api-server", [sys.executable, "-m", "airflow", "api-server", "--host",
                             "127.0.0.1", "--port", str(port)], server_env)
    air.start("scheduler", [sys.executable, "-m", "airflow", "scheduler"], control)
    dag_processor = {k: v for k, v in control.items()
                     if k != "AIRFLOW__API_AUTH__JWT_PRIVATE_KEY_PATH"}
    air.start("dag-processor", [sys.executable, "-m", "airflow", "dag-processor"], dag_processor)
    python, python_env = pool_python(air.base)
    for p in POOLS:
        home = air.pool_home[p]
        worker = {**base_env(), "HOME": str(home), "AIRFLOW_HOME": str(home / "air"),
                  "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                  "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{air.api}/execution/",
                  "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
                  "AIRFLOW__CELERY__BROKER_URL": air.broker.url(f"pool-{p}-{run}"),
                  "AIRFLOW__CELERY__RESULT_BACKEND": air.results.url(f"pool-{p}-{run}"),
                  "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2", **python_env}
        air.start(f"worker-{p}", [python, "-m", "airflow", "celery", "worker",
                                  "--queues", QUEUE[p], "--concurrency", "2",
                                  # no --celery-hostname: it asks every worker through
                                  # remote control (the pidbox exchanges) first
                                  "--skip-serve-logs", "--without-gossip", "--without-mingle"],
                  worker, user=users[p], cwd=home)
    wait_for_api(air)


def wait_for_api(air: Cluster) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for process, out in zip(air.processes, air.outputs, strict=True):
            if process.poll() is not None:
                pytest.fail(f"{out.stem} exited ({process.returncode}):\n"
                            f"{out.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{air.api}/api/v2/monitor/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail("the Airflow API server did not come up in 180 s")


def admin_token(air: Cluster) -> str:
    passwords = json.loads((air.control / "air" / "simple_auth_manager_passwords.json.generated"
                            ).read_text())
    got = httpx.post(f"{air.api}/auth/token", json={"username": "admin",
                                                    "password": passwords["admin"]}, timeout=30)
    assert got.status_code == 201, got.text
    return str(got.json()["access_token"])


def wait(what: str, check: Any, timeout: float, air: Cluster) -> Any:
    """Poll ``check()`` until it returns something truthy; a process that died fails it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        for process, out in zip(air.processes, air.outputs, strict=True):
            if process.poll() is not None:
                pytest.fail(f"{out.stem} exited ({process.returncode}) while waiting for "
                            f"{what}:\n{out.read_text(errors='replace')[-3000:]}")
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def trigger(air: Cluster, token: str, dag_id: str, conf: dict[str, Any]) -> str:
    got = httpx.post(f"{air.api}/api/v2/dags/{dag_id}/dagRuns",
                     headers={"authorization": f"Bearer {token}"},
                     json={"logical_date": None, "conf": conf}, timeout=30)
    assert got.status_code == 200, got.text
    return str(got.json()["dag_run_id"])


def leak_task_token(air: Cluster, ti_id: str, pool: str) -> None:
    """A task token for ``ti_id`` exactly as the scheduler signs one, left in pool
    ``pool``'s home: a token that leaked (from a log, a core file, a careless operator)."""
    from airflow.api_fastapi.auth.tokens import JWTGenerator, _pem_to_key

    key = _pem_to_key((air.control / "jwt-ed25519.pem").read_bytes())
    token = JWTGenerator(private_key=key, valid_for=600, audience="urn:airflow.apache.org:task",
                         issuer=None, algorithm="EdDSA").generate(
        {"sub": ti_id, "scope": "execution"})
    path = air.pool_home[pool] / "leaked_token"
    path.write_text(token)
    owner = air.pool_home[pool].stat()
    os.chown(path, owner.st_uid, owner.st_gid)
    path.chmod(0o600)


def processes_of(uid: int, marker: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid and marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids
