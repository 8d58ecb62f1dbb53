"""The HTTP front door, attacked the way a client on the network (or on the host) attacks it:
raw HTTP to a real ``mlsecrets serve`` on loopback, in front of a real vault (SoftHSM2,
SQLite and PostgreSQL).

- a forged ``X-Forwarded-For`` / ``Forwarded`` buys neither a new address nor a false
  ``client`` in the trail; only a configured trusted proxy is believed;
- a guessed token shown once to the unauthenticated schema is not "known good";
- a flood of failed logins from many (real, socket) addresses past the global ceiling is
  refused and summarised, not written record by record, and no failure goes uncounted;
- an internal error logs one line, never a traceback (standalone and mounted as the Airflow
  plugin is);
- out-of-range and wrong-typed numbers are a 400, not a 500.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from airflow_provider_mlsecrets.service.audit import AuditFilter
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.conftest import Env

MLSECRETS = [sys.executable, "-m", "airflow_provider_mlsecrets.cli.main"]
NOBODY = "<unauthenticated>"
# the plugin's app mounted under a parent app, exactly as the Airflow API server mounts it
# (``app.mount(url_prefix, subapp)``), served by uvicorn as ``airflow api-server`` serves it
AS_AIRFLOW_MOUNTS_IT = """
import sys, uvicorn
from fastapi import FastAPI
from airflow_provider_mlsecrets.api.airflow_plugin import MLSecretsPlugin
parent = FastAPI()
spec = MLSecretsPlugin.fastapi_apps[0]
parent.mount(spec["url_prefix"], spec["app"])
uvicorn.run(parent, host="127.0.0.1", port=int(sys.argv[1]), log_level="info",
            proxy_headers=False)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    stderr: Path
    prefix: str = ""

    def call(self, method: str, route: str, token: str | None = None, *,
             body: str | None = None, headers: dict[str, str] | None = None,
             source: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
        """One raw HTTP/1.1 request from the local address ``source``."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30,
                                                source_address=(source, 0))
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if body is not None:
            sent["Content-Type"] = "application/json"
        try:
            connection.request(method, f"{self.prefix}/v1/{route}",
                               body=None if body is None else body.encode(), headers=sent)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        try:
            answer = json.loads(payload) if payload else {}
        except ValueError:
            answer = {"raw": payload.decode(errors="replace")}
        return response.status, answer if isinstance(answer, dict) else {"list": answer}

    def stop(self) -> str:
        """Stop the server as an operator does (SIGTERM); what it wrote (its log)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        return self.stderr.read_text(errors="replace")


def server_environ(env: Env, **extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLSECRETS_")}
    environ.update(env.settings.as_config(), MLSECRETS_HOME=str(env.settings.home), **extra)
    return environ


@contextmanager
def serving(env: Env, *args: str, script: str | None = None, prefix: str = "",
            **extra: str) -> Iterator[Server]:
    """``mlsecrets serve ARGS`` (or ``script``) on a free loopback port, stopped after."""
    port = free_port()
    stderr = env.settings.home / f"server-{port}.stderr"
    command = ([sys.executable, "-c", script, str(port)] if script
               else [*MLSECRETS, "serve", "--port", str(port), *args])
    with stderr.open("wb") as sink:
        # both streams: Airflow's logging writes to stdout
        process = subprocess.Popen(command, env=server_environ(env, **extra),
                                   stdout=sink, stderr=subprocess.STDOUT)
    server = Server(port, process, stderr, prefix)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if server.call("GET", "openapi.json")[0] == 200:
                    break
            except OSError:
                assert process.poll() is None, stderr.read_text()
                assert time.monotonic() < deadline, "the server did not come up in 60 s"
                time.sleep(0.1)
        yield server
    finally:
        server.stop()


def guess() -> str:
    """A well-formed principal token nobody was given."""
    return "mls_" + secrets.token_urlsafe(32)


def denials(env: Env, after: str = "") -> list[Any]:
    """The ``<unauthenticated>`` records written after the time ``after``, oldest first."""
    return [r for r in env.vault.audit.tail(env.admin, 10_000, AuditFilter(principal=NOBODY))
            if r.ts > after]


def newest(env: Env) -> str:
    """The time of the newest audit record (a test's records come after it)."""
    return str(env.vault.audit.tail(env.admin, 1)[-1].ts)


def test_a_forged_forwarded_address_is_a_claim_and_buys_no_new_budget(env: Env) -> None:
    with serving(env, "--max-failed-auth", "10000") as server:
        codes = []
        for i in range(200):  # a different forged address and a fresh guess every time
            header = ({"X-Forwarded-For": f"203.0.113.{i % 250}"} if i % 2 else
                      {"Forwarded": f"for=198.51.100.{i % 250};proto=https"})
            codes.append(server.call("GET", "list", guess(), headers=header)[0])
    assert set(codes) == {401, 429}
    assert codes.count(401) <= 40  # the socket's budget (25 at once, 5 a second)
    records = denials(env)
    assert 0 < len(records) == codes.count(401)
    for record in records:
        assert record.context["client"] == "127.0.0.1"
        claimed = record.context["claimed_client"]
        assert claimed.startswith(("203.0.113.", "for=198.51.100.")), claimed
        assert "proxy" not in record.context


def test_only_a_trusted_proxy_is_believed(env: Env) -> None:
    admin = env.admin.token
    with serving(env, "--max-failed-auth", "10000",
                 MLSECRETS_TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8") as server:
        # the proxy (127.0.0.1) forwards a client, appended to what the client sent
        spoof = {"X-Forwarded-For": "192.0.2.66, 198.51.100.7"}
        assert server.call("GET", "list", admin, headers=spoof)[0] == 200
        codes = [server.call("GET", "list", guess(), headers=spoof)[0] for _ in range(40)]
        assert 429 in codes  # the forwarded client spent its own budget...
        other = {"X-Forwarded-For": "198.51.100.8"}
        assert server.call("GET", "list", guess(), headers=other)[0] == 401  # ...not others'
        assert server.call("GET", "list", admin, headers=spoof)[0] == 200  # known good
        # a hop through a second trusted proxy is skipped; RFC 7239 is read too
        chained = {"Forwarded": 'for="[2001:db8::7]:4711", for=10.1.2.3'}
        assert server.call("GET", "list", guess(), headers=chained)[0] == 401
        # the same header from a peer that is not a proxy is only a claim
        assert server.call("GET", "list", guess(), headers=other,
                           source="127.0.0.2")[0] == 401
    contexts = [r.context for r in denials(env)]
    believed = [c for c in contexts if c["client"] == "198.51.100.7"]
    assert believed and all(c["proxy"] == "127.0.0.1" and "claimed_client" not in c
                            for c in believed)
    assert any(c["client"] == "198.51.100.8" for c in contexts)
    assert any(c["client"] == "2001:db8::7" and c["proxy"] == "127.0.0.1" for c in contexts)
    assert contexts[-1] == {"component": "http", "client": "127.0.0.2",
                            "claimed_client": "198.51.100.8"}
    assert not any(c["client"] == "192.0.2.66" for c in contexts)


def test_a_guessed_token_shown_to_the_schema_is_still_limited(env: Env) -> None:
    token = guess()
    with serving(env, "--max-failed-auth", "10000") as server:
        assert server.call("GET", "list", env.admin.token)[0] == 200
        assert server.call("GET", "openapi.json", token)[0] == 200  # priming, as reviewed
        codes = [server.call("GET", "list", token)[0] for _ in range(200)]
        assert 429 in codes and codes.count(401) <= 40
        # the door still knows the credential that did authenticate
        assert server.call("GET", "list", env.admin.token)[0] == 200
    assert len(denials(env)) == codes.count(401)


def test_a_flood_from_many_addresses_is_summarised_not_recorded_one_by_one(env: Env) -> None:
    sources = [f"127.0.0.{n}" for n in range(2, 42)]  # 40 real socket addresses
    newcomer = env.vault.access.create_principal(env.admin, "newcomer", "viewer")
    before = newest(env)
    with serving(env, "--max-failed-auth", "5", "--failed-auth-window", "1") as server:
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(
                lambda n: server.call("GET", "list", guess(), source=sources[n % 40])[0],
                range(200)))
        elapsed = time.monotonic() - started
        # during the flood, a valid token (seen before or not) still gets in
        assert server.call("GET", "list", env.admin.token)[0] == 200
        assert server.call("GET", "list", newcomer)[0] == 200
        time.sleep(2.5)  # the flood has stopped: the window's summary is written anyway
        stderr_at_end = server.stop()
    refused = codes.count(401)
    assert refused == 200, codes  # 5 per address: no address spent its own budget
    mine = denials(env, before)
    one_by_one = [r for r in mine if r.action != "auth.failures"]
    summaries = [r for r in mine if r.action == "auth.failures"]
    # the ceiling: 5 at once, 5 a second (a second of slack for the clocks)
    assert len(one_by_one) <= 5 * (elapsed + 2) < 100
    assert summaries and len(summaries) <= elapsed + 3
    assert len(one_by_one) + sum(int(s.context["failures"]) for s in summaries) == refused
    named = {a for s in summaries for a in str(s.context["addresses"]).split(",")}
    assert named <= set(sources) and len(named) > 1
    assert all(s.outcome == "denied" and int(s.context["distinct_addresses"]) >= 1
               and s.context["first"] <= s.context["last"] for s in summaries)
    assert "Traceback" not in stderr_at_end
    report = env.vault.audit.verify(env.admin)
    assert report.ok, report.problems


def test_a_flood_cut_short_by_a_shutdown_is_still_summarised(env: Env) -> None:
    with serving(env, "--max-failed-auth", "1", "--failed-auth-window", "3600") as server:
        codes = [server.call("GET", "list", guess(), source=f"127.0.1.{n % 10 + 1}")[0]
                 for n in range(30)]
    assert codes.count(401) == 30
    records = denials(env)
    summaries = [r for r in records if r.action == "auth.failures"]
    assert len(summaries) == 1
    assert len(records) - 1 + int(summaries[0].context["failures"]) == 30


def _break_the_audit_context(env: Env) -> None:
    """As the database's owner, with the audit table's triggers off: a record's context
    nested deeper than Python's JSON reader can recurse, a few records below the head."""
    engine = engine_for(env.settings.db_url)
    with engine.begin() as connection:
        if env.database.kind == "sqlite":
            connection.execute(text("DROP TRIGGER mlsecrets_audit_no_update"))
        else:
            connection.execute(text("ALTER TABLE mlsecrets_audit DISABLE TRIGGER USER"))
        seq = connection.execute(text("SELECT max(seq) - 2 FROM mlsecrets_audit")).scalar()
        connection.execute(text("UPDATE mlsecrets_audit SET context = :c WHERE seq = :s"),
                           {"c": "[" * 100_000 + "]" * 100_000, "s": seq})


@pytest.mark.parametrize("surface", ["serve", "airflow-plugin"])
def test_an_internal_error_logs_one_line_and_no_traceback(env: Env, surface: str) -> None:
    for n in range(3):
        env.vault.secrets.put(env.admin, f"ml/n{n}", b"x")
    _break_the_audit_context(env)
    plugin = surface == "airflow-plugin"
    with serving(env, script=AS_AIRFLOW_MOUNTS_IT if plugin else None,
                 prefix="/mlsecrets" if plugin else "") as server:
        status, answer = server.call("GET", "audit?n=20", env.admin.token)
        assert status == 500
        assert answer == {"error": "InternalError", "message": "internal error",
                          "exit_code": 1}
        assert server.call("GET", "list", env.admin.token)[0] == 200  # still serving
        stderr = server.stop()
    assert "Traceback" not in stderr and 'File "' not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "internal error" in line]
    assert len(lines) == 1 and "RecursionError" in lines[0], stderr[-3000:]


BAD_BODIES = [
    ("POST", "read/ml/a", '{"version": 1e23}'),
    ("POST", "read/ml/a", '{"version": 100000000000000000000000}'),
    ("POST", "read/ml/a", '{"version": 2147483648}'),
    ("POST", "inject/ml/a", '{"version": 1e18}'),
    ("POST", "inject/ml/a", '{"version": true}'),
    ("POST", "read/ml/a", '{"version": 1.0}'),
    ("POST", "read/ml/a", '{"version": "1"}'),
    ("POST", "read/ml/a", '{"version": NaN}'),
    ("POST", "read/ml/a", '{"version": -Infinity}'),
    ("POST", "read/ml/a", '{"version": 0}'),
    ("PUT", "secrets/ml/a", '{"value_b64": "QQ==", "cas": 1e23}'),
    ("PUT", "secrets/ml/a", '{"value_b64": "QQ==", "cas": false}'),
    ("POST", "destroy/ml/a", '{"version": 9223372036854775808}'),
    ("POST", "audit/verify", '{"all_seals": 1}'),
    ("POST", "audit/verify", '{"all_seals": "yes"}'),
    ("POST", "keys/rotate", '{"resume": 0}'),
    ("POST", "principals", '{"name": "p", "role": "viewer", "expires_at": 1e23}'),
    ("POST", "principals", '{"name": "p", "role": "viewer", "expires_at": '
                           '"2030-01-01T00:00:00"}'),
    ("POST", "principals", '{"name": "p", "role": "viewer", "expires_at": '
                           '"9999-12-31T23:59:59-23:59"}'),
    ("POST", "grants", '{"principal": "p", "pattern": "a", "capabilities": ["list"], '
                       '"deny": 1e23}'),
]


def test_out_of_range_and_wrong_typed_numbers_are_a_400(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/a", b"x")
    before = newest(env)
    with serving(env, "--rate", "1000", "--burst", "1000") as server:
        for method, route, body in BAD_BODIES:
            status, answer = server.call(method, route, env.admin.token, body=body)
            assert (status, answer.get("error"), answer.get("exit_code")) == (
                400, "InvalidInput", 2), (method, route, body, status, answer)
            assert set(answer) == {"error", "message", "exit_code"}
        # the same routes with good numbers work
        assert server.call("POST", "read/ml/a", env.admin.token,
                           body='{"version": 1, "reason": "in a test"}')[0] == 200
        assert server.call("POST", "principals", env.admin.token, body=json.dumps(
            {"name": "p", "role": "viewer", "expires_at": "2030-01-01T00:00:00Z"}))[0] == 200
        stderr = server.stop()
    assert "Traceback" not in stderr and "internal error" not in stderr
    # nothing reached the vault but the two good calls
    assert [r.action for r in env.vault.audit.tail(env.admin, 10)
            if r.ts > before and r.action != "audit.tail"] == ["secret.read", "principal.create"]


def test_a_refused_caller_is_never_marked_good_by_a_route_that_authenticates_nobody(
        env: Env) -> None:
    """The unit of the fix behind the priming attack, through the real server: a token that
    authenticated is let through its address's spent budget, a primed one is not."""
    viewer = env.vault.access.create_principal(env.admin, "v", "viewer")
    with serving(env) as server:
        assert server.call("GET", "list", viewer)[0] == 200
        primed = guess()
        server.call("GET", "openapi.json", primed)
        while server.call("GET", "list", guess())[0] != 429:  # spend the address's budget
            pass
        assert server.call("GET", "list", primed)[0] == 429
        assert server.call("GET", "list", viewer)[0] == 200
