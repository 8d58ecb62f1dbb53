"""Attacks on the rotators, done the way an attacker does them.

* A fake PostgreSQL server on loopback (any local process can listen where a rotator's
  ``host``/``port`` points, or where the real server is down) asks for a cleartext or MD5
  password, lets the client in unauthenticated, or plays SCRAM without knowing the
  verifier. The ``postgres`` rotator must send it no password (neither the admin's nor the
  new one), fail closed and leave ``current`` alone.
* A slow HTTP service drips its answer one byte at a time. The ``http`` rotator's call must
  end at its configured timeout, not at a per-read timeout that every byte resets.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_provider_mlsecrets.errors import RotationFailed
from airflow_provider_mlsecrets.rotation.interface import RotationContext, RotatorError
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.rotation.rotators.http import HttpRotator
from airflow_provider_mlsecrets.rotation.rotators.postgres import PostgresRotator
from tests.conftest import Env
from tests.pg_server import ScramPostgres
from tests.pg_server import scram_postgres as scram_postgres  # the fixture

ADMIN_PATH = "db/pg_admin"
APP_PATH = "db/app/password"
ADMIN_USER = "vault_admin"
ADMIN_PASSWORD = "admin-Pw-" + "5f1c9e2a7b3d"  # what the attacker wants
OLD = "old-Pw-" + "9d3e7a1c5b"

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5 = 0, 3, 5
AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 10, 11, 12


# --- a fake PostgreSQL server ---------------------------------------------------------
@dataclass
class FakePostgres:
    """Speaks just enough of the v3 protocol to ask for a password and keep what comes.

    ``mode``: ``cleartext`` (AuthenticationCleartextPassword), ``md5``
    (AuthenticationMD5Password), ``trust`` (AuthenticationOk at once, then it records
    queries), ``scram-no-final`` (SCRAM, then AuthenticationOk without the server's proof)
    and ``scram-bad-final`` (SCRAM with a made-up server signature)."""

    mode: str
    received: bytearray = field(default_factory=bytearray)  # every byte after the startup
    password_messages: list[bytes] = field(default_factory=list)  # 'p' messages
    queries: list[bytes] = field(default_factory=list)  # anything after authentication
    startups: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fake-pg")
        self._thread.start()

    def close(self) -> None:
        self.listener.close()

    def uri(self, user: str = ADMIN_USER, password: str = ADMIN_PASSWORD,
            query: str = "") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/postgres{query}"

    # -- the server ------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            self._startup(conn)
            if self._authenticate(conn):
                self._after_login(conn)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    @staticmethod
    def _exactly(conn: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _message(self, conn: socket.socket) -> tuple[bytes, bytes]:
        kind = self._exactly(conn, 1)
        (length,) = struct.unpack("!I", self._exactly(conn, 4))
        body = self._exactly(conn, length - 4)
        with self._lock:
            self.received += kind + body
        return kind, body

    @staticmethod
    def _send(conn: socket.socket, kind: bytes, body: bytes) -> None:
        conn.sendall(kind + struct.pack("!I", len(body) + 4) + body)

    def _auth(self, conn: socket.socket, code: int, data: bytes = b"") -> None:
        self._send(conn, b"R", struct.pack("!I", code) + data)

    def _fatal(self, conn: socket.socket) -> None:
        self._send(conn, b"E", b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0")

    def _startup(self, conn: socket.socket) -> None:
        while True:  # refuse TLS and GSS encryption: the attacker has no certificate
            (length,) = struct.unpack("!I", self._exactly(conn, 4))
            body = self._exactly(conn, length - 4)
            (code,) = struct.unpack("!I", body[:4])
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                conn.sendall(b"N")
                continue
            fields = body[4:].split(b"\0")
            with self._lock:
                self.startups.append({fields[i].decode(): fields[i + 1].decode()
                                      for i in range(0, len(fields) - 1, 2) if fields[i]})
            return

    def _password(self, conn: socket.socket) -> bytes:
        kind, body = self._message(conn)
        if kind != b"p":
            raise EOFError
        with self._lock:
            self.password_messages.append(body)
        return body

    def _authenticate(self, conn: socket.socket) -> bool:
        """True when the client is "in" (what a real attacker wants next: its queries)."""
        if self.mode == "cleartext":
            self._auth(conn, AUTH_CLEARTEXT)
            self._password(conn)
        elif self.mode == "md5":
            self._auth(conn, AUTH_MD5, secrets.token_bytes(4))
            self._password(conn)
        elif self.mode == "trust":
            pass
        else:
            self._scram(conn)
        self._auth(conn, AUTH_OK)
        for name, value in (("server_version", "17.0"), ("client_encoding", "UTF8"),
                            ("standard_conforming_strings", "on"),
                            ("integer_datetimes", "on")):
            self._send(conn, b"S", name.encode() + b"\0" + value.encode() + b"\0")
        self._send(conn, b"K", struct.pack("!II", 4242, 4242))
        self._send(conn, b"Z", b"I")
        return True

    def _scram(self, conn: socket.socket) -> None:
        """SCRAM-SHA-256 from a server that does not hold the verifier: it can ask for a
        proof (and try to crack it offline) but cannot prove itself."""
        self._auth(conn, AUTH_SASL, b"SCRAM-SHA-256\0\0")
        initial = self._password(conn)
        client_first = initial.split(b"\0", 1)[1][4:].decode()
        client_nonce = client_first.split("r=", 1)[1].split(",")[0]
        salt = base64.b64encode(secrets.token_bytes(16)).decode()
        server_first = f"r={client_nonce}{secrets.token_urlsafe(18)},s={salt},i=1"
        self._auth(conn, AUTH_SASL_CONTINUE, server_first.encode())
        self._password(conn)  # client-final: the proof the attacker keeps
        if self.mode == "scram-bad-final":
            signature = base64.b64encode(secrets.token_bytes(32)).decode()
            self._auth(conn, AUTH_SASL_FINAL, f"v={signature}".encode())

    def _after_login(self, conn: socket.socket) -> None:
        """Keep every query (ALTER ROLE ... would hold the new verifier) and fail it."""
        while True:
            kind, body = self._message(conn)
            if kind == b"X":
                return
            with self._lock:
                self.queries.append(kind + body)
            if kind in (b"Q", b"S"):
                self._fatal(conn)
                return

    def leaked(self, *values: str) -> list[str]:
        """Which of ``values`` reached the server as text. (An MD5 answer is caught by
        ``password_messages`` staying empty; a SCRAM proof holds no password.)"""
        with self._lock:
            seen = bytes(self.received)
        return [value for value in values if value.encode() in seen]


@pytest.fixture
def fake_postgres() -> Iterator[dict[str, FakePostgres]]:
    servers: dict[str, FakePostgres] = {}
    yield servers
    for server in servers.values():
        server.close()


def fake(servers: dict[str, FakePostgres], mode: str) -> FakePostgres:
    servers[mode] = FakePostgres(mode)
    return servers[mode]


MODES = ["cleartext", "md5", "trust", "scram-no-final", "scram-bad-final"]
REFUSED = (r'(authentication method requirement "scram-sha-256" failed|incorrect server '
           r"signature).*; no password was sent")


def test_the_fake_server_harvests_a_password_from_a_plain_client(
        fake_postgres: dict[str, FakePostgres]) -> None:
    """The control: psycopg without the rotator's settings hands the fake server the
    password, so the tests below prove the rotator, not a broken fake."""
    psycopg = pytest.importorskip("psycopg")
    server = fake(fake_postgres, "cleartext")
    psycopg.connect(server.uri(), connect_timeout=5).close()  # and it is "in"
    assert server.password_messages == [ADMIN_PASSWORD.encode() + b"\0"]
    assert server.leaked(ADMIN_PASSWORD) == [ADMIN_PASSWORD]


# --- the postgres rotator, through the vault's rotation -------------------------------
def start_rotation(env: Env, admin_uri: str, **config: Any) -> None:
    """``db/app/password`` holds OLD and rotates with ``postgres``; ``db/pg_admin`` holds
    ``admin_uri``."""
    env.vault.secrets.put(env.admin, ADMIN_PATH, admin_uri.encode())
    env.vault.secrets.put(env.admin, APP_PATH, OLD.encode())
    env.vault.rotation.set_policy(env.admin, APP_PATH, RotationPolicy(
        schedule="30d", rotator="postgres",
        config={"role": "app_reader", "admin_secret": ADMIN_PATH, "connect_timeout": 5,
                **config}))


def rotate_fails(env: Env, step: str) -> tuple[str, str]:
    """Rotate; assert it failed at ``step`` with ``current`` untouched. Returns the error
    and the pending value the service must never have seen."""
    began = time.monotonic()
    with pytest.raises(RotationFailed, match=f"failed at {step}: ") as caught:
        env.vault.rotation.rotate(env.admin, APP_PATH)
    assert time.monotonic() - began < 30  # refused at once, not after timeouts
    assert env.vault.secrets.read(env.admin, APP_PATH, reason="in a test") == OLD.encode()
    status = env.vault.rotation.show(env.admin, APP_PATH)
    assert (status.last_result, status.failures) == ("failed", 1)
    assert status.pending_version is not None
    pending = env.vault.secrets.read(env.admin, APP_PATH, status.pending_version,
            reason="in a test").decode()
    assert pending != OLD
    current = [v for v in env.vault.secrets.versions(env.admin, APP_PATH)
               if v.state == "current"]
    assert [v.version for v in current] == [1]
    return str(caught.value), pending


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("query", ["", "?sslmode=disable&require_auth=password,md5,none"
                                       "&channel_binding=disable"])
def test_a_fake_server_as_admin_gets_no_password(
        env: Env, fake_postgres: dict[str, FakePostgres], mode: str, query: str) -> None:
    """The admin URI points at the fake server (even one that asks for cleartext itself):
    ``set`` fails before the admin password or the new verifier leaves the vault."""
    server = fake(fake_postgres, mode)
    start_rotation(env, server.uri(query=query))
    error, pending = rotate_fails(env, "set")
    assert re.search(REFUSED, error), error
    assert ADMIN_PASSWORD not in error and pending not in error
    assert server.startups and server.startups[0]["user"] == ADMIN_USER  # it was reached
    assert server.leaked(ADMIN_PASSWORD, pending) == []
    assert server.queries == []  # no ALTER ROLE, no verifier
    if mode in ("cleartext", "md5"):
        assert server.password_messages == []  # refused before answering
    trail = env.vault.audit.tail(env.admin, 20)
    failed = [r for r in trail if r.action == "rotation.fail"]
    assert failed and failed[-1].outcome == "error"
    assert all(ADMIN_PASSWORD not in (r.reason or "") and pending not in (r.reason or "")
               for r in trail)


@pytest.mark.parametrize("mode", ["cleartext", "md5", "scram-no-final"])
def test_a_fake_server_as_login_target_gets_no_password(
        env: Env, scram_postgres: ScramPostgres, fake_postgres: dict[str, FakePostgres],
        mode: str) -> None:
    """The real server takes the new verifier; the configured test host is a fake. ``test``
    fails closed without sending the new password, and ``current`` is untouched."""
    server = fake(fake_postgres, mode)
    scram_postgres.create_role("app_reader", OLD)
    start_rotation(env, scram_postgres.admin_uri, host="127.0.0.1", port=server.port)
    error, pending = rotate_fails(env, "test")
    assert re.search(REFUSED, error), error
    assert server.startups and server.startups[0]["user"] == "app_reader"
    assert server.leaked(pending, OLD, scram_postgres.superuser_password) == []
    assert server.queries == []


@pytest.mark.parametrize("mode", MODES)
def test_invalidate_sends_a_fake_server_no_old_password(
        fake_postgres: dict[str, FakePostgres], scram_postgres: ScramPostgres,
        mode: str) -> None:
    """``invalidate`` logs in with the old password to check it is refused: a fake server
    learns nothing from that either, and the check fails instead of passing."""
    server = fake(fake_postgres, mode)
    rotator = PostgresRotator({"role": "app_reader", "admin_secret": ADMIN_PATH,
                               "host": "127.0.0.1", "port": server.port,
                               "connect_timeout": 5})
    ctx = RotationContext(path=APP_PATH, current=b"new-" + OLD.encode(),
                          secret=lambda path: scram_postgres.admin_uri.encode())
    with pytest.raises(RotatorError, match=REFUSED) as caught:
        rotator.invalidate(ctx, OLD.encode())
    assert OLD not in str(caught.value)
    assert server.leaked(OLD, scram_postgres.superuser_password) == []
    assert server.queries == []


# --- the http rotator against a service that drips its answer -------------------------
class DripServer:
    """Accepts HTTP requests and answers one byte every ``interval`` seconds, forever (a
    per-read timeout of a second never fires)."""

    def __init__(self, interval: float = 0.5, *, headers_first: bool = False) -> None:
        self.interval = interval
        self.headers_first = headers_first  # send full headers at once, then drip the body
        self.requests = 0
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True, name="drip").start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()
        self.listener.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.requests += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        body = json.dumps({"key": "k" * 2000}).encode()
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        try:
            conn.recv(65536)
            if self.headers_first:
                conn.sendall(head)
                answer = body
            else:
                answer = head + body
            for byte in answer:
                if self.stop.wait(self.interval):
                    return
                conn.sendall(bytes([byte]))
        except OSError:
            pass
        finally:
            conn.close()


@pytest.fixture
def drip(request: pytest.FixtureRequest) -> Iterator[DripServer]:
    """Drips the whole answer; parametrize ``drip`` indirectly with True to drip only the
    body (which only ``create`` reads)."""
    server = DripServer(headers_first=getattr(request, "param", False))
    yield server
    server.close()


def drip_config(server: DripServer) -> dict[str, Any]:
    return {"issue_url": server.url("/keys"), "test_url": server.url("/whoami"),
            "revoke_url": server.url("/keys/revoke"), "timeout": 1}


@pytest.mark.parametrize(("step", "drip"), [
    ("create", False), ("test", False), ("invalidate", False), ("create", True),
], ids=["create", "test", "invalidate", "create-dripped-body"], indirect=["drip"])
def test_a_dripping_service_cannot_hold_a_call_past_its_timeout(drip: DripServer,
                                                                step: str) -> None:
    rotator = HttpRotator(drip_config(drip))
    ctx = RotationContext(path="svc/key", current=b"current-key", secret=lambda p: b"")
    calls = {"create": lambda: rotator.create(ctx),
             "test": lambda: rotator.test(ctx, b"pending-key"),
             "invalidate": lambda: rotator.invalidate(ctx, b"current-key")}
    began = time.monotonic()
    with pytest.raises(RotatorError, match=r"did not finish within 1 s") as caught:
        calls[step]()
    assert time.monotonic() - began < 3  # 3x the timeout; it held 22 s before
    assert drip.requests >= 1
    assert "current-key" not in str(caught.value) and "pending-key" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_a_dripping_service_fails_the_rotation_closed(env: Env, drip: DripServer) -> None:
    env.vault.secrets.put(env.admin, "svc/key", b"current-key")
    env.vault.rotation.set_policy(env.admin, "svc/key", RotationPolicy(
        schedule="30d", rotator="http", config=drip_config(drip)))
    began = time.monotonic()
    with pytest.raises(RotationFailed, match=r"failed at create: .*did not finish within 1 s"):
        env.vault.rotation.rotate(env.admin, "svc/key")
    assert time.monotonic() - began < 10  # the rotation's own work plus one 1 s call
    assert env.vault.secrets.read(env.admin, "svc/key", reason="in a test") == b"current-key"
    assert [v.state for v in env.vault.secrets.versions(env.admin, "svc/key")] == ["current"]
