"""A private PostgreSQL server that really checks passwords, for tests that rotate them.

The shared test server trusts every login, so a wrong password would pass there. This one
is made by ``initdb --auth=scram-sha-256`` in a temporary directory, listens on a free port
of 127.0.0.1 (unix sockets stay in that directory) and logs every statement
(``log_statement=all``) to a file a test can read. One server per session.

initdb refuses to run as root, so as root the server runs as the ``postgres`` OS user
(``runuser``). Its directory is made with ``tempfile.mkdtemp`` under /tmp, not under pytest's
``tmp_path``: pytest makes ``/tmp/pytest-of-root`` mode 0700, which the ``postgres`` user
cannot traverse, and its deep paths can exceed the 107-byte limit of a unix socket path.

Usage in a test module::

    from tests.pg_server import ScramPostgres
    from tests.pg_server import scram_postgres as scram_postgres  # the fixture
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import pytest

SERVER_USER = "postgres"  # the OS user the server runs as when the tests run as root
TRUSTED_ROLE = "mlsecrets_trusted"  # pg_hba lets this one role in without a password
# every log line names its SQLSTATE and user: psycopg gives no SQLSTATE for a failed login
# (``OperationalError.sqlstate`` is None), the server log does
LOG_LINE_PREFIX = "%m [%p] sqlstate=%e user=%u "


def _tool(name: str) -> str | None:
    """``name`` (initdb, pg_ctl) from PATH, else from the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parent.parent.name
        return tuple(int(p) for p in part.split(".") if p.isdigit())

    return max(candidates, key=version) if candidates else None


def _unavailable(message: str) -> NoReturn:
    """Fail in CI (the tests must run there), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the PostgreSQL rotator tests", pytrace=False)
    pytest.skip(message + "; install the PostgreSQL server binaries to run these tests")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ScramPostgres:
    """A running server. ``superuser_password`` contains ``@``, ``/``, ``:`` and ``%`` on
    purpose, so :attr:`admin_uri` has to percent-encode it."""

    host: str
    port: int
    superuser: str
    superuser_password: str
    base: Path
    logfile: Path
    restart: Callable[[], None]
    dbname: str = "postgres"

    @property
    def admin_uri(self) -> str:
        """A libpq URI of the superuser, as an ``admin_secret`` holds it."""
        return (f"postgresql://{quote(self.superuser, safe='')}:"
                f"{quote(self.superuser_password, safe='')}@{self.host}:{self.port}/"
                f"{self.dbname}")

    def connect(self, user: str | None = None, password: str | None = None,
                **kwargs: Any) -> Any:
        """A psycopg connection (autocommit), as the superuser unless told otherwise."""
        import psycopg

        params: dict[str, Any] = {
            "host": self.host, "port": self.port, "dbname": self.dbname,
            "user": user or self.superuser,
            "password": self.superuser_password if user is None else password,
            "connect_timeout": 10, "autocommit": True,
        }
        params.update(kwargs)
        return psycopg.connect(**params)

    def create_role(self, name: str, password: str | None, *, login: bool = True) -> None:
        """Create role ``name`` (dropping any old one) with ``password`` (``None``: no
        password). The name is quoted as an identifier, the password sent as a literal."""
        from psycopg import sql

        options = sql.SQL("LOGIN" if login else "NOLOGIN")
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            if password is None:
                conn.execute(sql.SQL("CREATE ROLE {} {}").format(sql.Identifier(name), options))
            else:
                conn.execute(sql.SQL("CREATE ROLE {} {} PASSWORD {}").format(
                    sql.Identifier(name), options, sql.Literal(password)))

    def stored_password(self, name: str) -> str | None:
        """What the server stores for ``name`` (``pg_authid.rolpassword``)."""
        with self.connect() as conn:
            row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                               (name,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def failed_logins(self, user: str) -> list[str]:
        """The SQLSTATE of every refused login of ``user`` so far, from the server log."""
        pattern = re.compile(rf"sqlstate=(\w{{5}}) user={re.escape(user)} FATAL:")
        return pattern.findall(self.log_text())

    def log_text(self) -> str:
        """The server log so far (every statement, as ``log_statement=all`` writes it)."""
        return self.logfile.read_text(encoding="utf-8", errors="replace")


class _Server:
    """initdb, start and stop, as the ``postgres`` OS user when running as root."""

    def __init__(self, initdb: str, pg_ctl: str) -> None:
        self.initdb = initdb
        self.pg_ctl = pg_ctl
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="mlsecrets-pg-", dir="/tmp"))
        self.data = self.base / "data"
        self.logfile = self.base / "server.log"
        self.password = f"p@ss/w:rd%{secrets.token_urlsafe(18)}"
        self.superuser = "vault_admin"
        if self.as_root:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.base, user.pw_uid, user.pw_gid)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        # cwd: the server user may not be allowed into the caller's working directory
        result = subprocess.run(command, cwd=self.base, capture_output=True, text=True,
                                timeout=120, check=False,
                                env={**os.environ, "LC_ALL": "C", "LANG": "C"})
        return result

    def write_owned(self, path: Path, text: str) -> None:
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)
        if self.as_root:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

    def init(self) -> None:
        pwfile = self.base / "pwfile"
        self.write_owned(pwfile, self.password + "\n")
        result = self.run(self.initdb, "-D", str(self.data), "-U", self.superuser,
                          "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                          "--locale=C", "--no-sync")
        pwfile.unlink()
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        # one role that needs no password, to test that a rotator notices a trusting server
        hba = self.data / "pg_hba.conf"
        rules = hba.read_text(encoding="utf-8")
        self.write_owned(hba, f"host all {TRUSTED_ROLE} 127.0.0.1/32 trust\n" + rules)

    def start(self) -> int:
        for _attempt in range(3):  # the free port can be taken before the server binds it
            port = _free_port()
            options = " ".join([
                "-k", shlex.quote(str(self.base)), "-c", "listen_addresses=127.0.0.1",
                "-p", str(port), "-c", "logging_collector=off", "-c", "log_statement=all",
                "-c", "fsync=off", "-c", "lc_messages=C",
                "-c", shlex.quote(f"log_line_prefix={LOG_LINE_PREFIX}"),
            ])
            result = self.run(self.pg_ctl, "-D", str(self.data), "-l", str(self.logfile),
                              "-w", "-t", "60", "-o", options, "start")
            if result.returncode == 0:
                return port
        log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
        raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}\n{result.stderr}\n{log}")

    def restart(self) -> None:
        """Stop (fast: every connection is cut) and start again on the same port."""
        result = self.run(self.pg_ctl, "-D", str(self.data), "-l", str(self.logfile), "-m",
                          "fast", "-w", "-t", "60", "restart")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed:\n{result.stdout}\n{result.stderr}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


def _new_server() -> _Server:
    pytest.importorskip("psycopg")
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        _unavailable("initdb/pg_ctl not found on PATH or under /usr/lib/postgresql/*/bin")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            _unavailable(f"running as root, but there is no {SERVER_USER!r} OS user to run "
                         "initdb as (initdb refuses root)")
        if shutil.which("runuser") is None:
            _unavailable("running as root, but runuser (util-linux) is missing")
    return _Server(initdb, pg_ctl)


@contextlib.contextmanager
def _running(server: _Server) -> Iterator[ScramPostgres]:
    try:
        server.init()
        port = server.start()
        yield ScramPostgres(host="127.0.0.1", port=port, superuser=server.superuser,
                            superuser_password=server.password, base=server.base,
                            logfile=server.logfile, restart=server.restart)
    finally:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture(scope="session")
def scram_postgres() -> Iterator[ScramPostgres]:
    """A PostgreSQL server with scram-sha-256 authentication, for the whole session."""
    with _running(_new_server()) as server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[ScramPostgres]:
    """A server of this test's own, which it may restart."""
    with _running(_new_server()) as server:
        yield server
