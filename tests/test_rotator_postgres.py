"""The ``postgres`` rotator against a real server that checks passwords (scram-sha-256)."""

from __future__ import annotations

import base64
import re
import string
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from airflow_provider_mlsecrets.errors import ConfigurationError, InvalidInput
from airflow_provider_mlsecrets.rotation.interface import RotationContext, RotatorError
from airflow_provider_mlsecrets.rotation.rotators import postgres as pg_rotator
from airflow_provider_mlsecrets.rotation.rotators.postgres import (
    PostgresRotator,
    scram_sha256_verifier,
)
from tests.pg_server import TRUSTED_ROLE, ScramPostgres
from tests.pg_server import scram_postgres as scram_postgres  # the fixture

psycopg = pytest.importorskip("psycopg")

ADMIN = "db/admin"
OLD = "old-Pw-8e41c0d2b7"  # as the role's password before rotation (plain text in the log)
NEW = b"NewPw7c2d9e41f0a3b5c6d7e8f9a0b1c2"  # 32 letters and digits, like create() makes


@dataclass
class Role:
    name: str
    password: str


@pytest.fixture
def role(scram_postgres: ScramPostgres) -> Role:
    name = f"app_{uuid.uuid4().hex[:12]}"
    scram_postgres.create_role(name, OLD)
    return Role(name, OLD)


def rotator(role: str, **config: Any) -> PostgresRotator:
    return PostgresRotator({"role": role, "admin_secret": ADMIN, "connect_timeout": 5,
                            **config})


def context(server: ScramPostgres, admin_uri: str | None = None) -> RotationContext:
    values = {ADMIN: (admin_uri or server.admin_uri).encode()}
    return RotationContext(path="db/app", current=OLD.encode(),
                           secret=lambda path: values[path])


def login_works(server: ScramPostgres, user: str, password: str) -> bool:
    """True if ``user`` logs in with ``password``; False if refused as a wrong password."""
    try:
        with server.connect(user, password) as conn:
            assert conn.pgconn.used_password
            assert conn.execute("SELECT current_user").fetchone() == (user,)
        return True
    except psycopg.OperationalError as exc:
        assert exc.sqlstate is None  # psycopg has none for a failed login: see failed_logins
        assert f'password authentication failed for user "{user}"' in str(exc)
        return False


def assert_clean(exc: BaseException, *secrets: str | bytes) -> None:
    """No secret in the message or repr, and no chained exception that might hold one."""
    shown = f"{exc}\n{exc!r}\n{exc.args!r}"
    for value in secrets:
        text = value.decode() if isinstance(value, bytes) else value
        assert text not in shown, f"secret leaked into {shown!r}"
    assert exc.__cause__ is None and exc.__context__ is None


# --- configuration --------------------------------------------------------------------
@pytest.mark.parametrize(("config", "key"), [
    ({"admin_secret": ADMIN}, "role"),
    ({"role": "", "admin_secret": ADMIN}, "role"),
    ({"role": "x; drop", "admin_secret": ADMIN}, "role"),
    ({"role": 'x"; DROP ROLE admin; --', "admin_secret": ADMIN}, "role"),
    ({"role": "1app", "admin_secret": ADMIN}, "role"),
    ({"role": "$app", "admin_secret": ADMIN}, "role"),
    ({"role": "a" * 64, "admin_secret": ADMIN}, "role"),
    ({"role": "app-user", "admin_secret": ADMIN}, "role"),
    ({"role": 7, "admin_secret": ADMIN}, "role"),
    ({"role": "app"}, "admin_secret"),
    ({"role": "app", "admin_secret": "../etc/passwd"}, "admin_secret"),
    ({"role": "app", "admin_secret": ADMIN, "length": 15}, "length"),
    ({"role": "app", "admin_secret": ADMIN, "length": 129}, "length"),
    ({"role": "app", "admin_secret": ADMIN, "length": "32"}, "length"),
    ({"role": "app", "admin_secret": ADMIN, "length": True}, "length"),
    ({"role": "app", "admin_secret": ADMIN, "connect_timeout": 0}, "connect_timeout"),
    ({"role": "app", "admin_secret": ADMIN, "connect_timeout": 121}, "connect_timeout"),
    ({"role": "app", "admin_secret": ADMIN, "port": 0}, "port"),
    ({"role": "app", "admin_secret": ADMIN, "port": "5432"}, "port"),
    ({"role": "app", "admin_secret": ADMIN, "host": ""}, "host"),
    ({"role": "app", "admin_secret": ADMIN, "dbname": 3}, "dbname"),
])
def test_a_bad_configuration_is_refused_naming_the_key(config: dict[str, Any],
                                                         key: str) -> None:
    with pytest.raises(InvalidInput, match=f"'{key}'"):
        PostgresRotator(config)


def test_a_good_configuration() -> None:
    r = PostgresRotator({"role": "App$user_1", "admin_secret": ADMIN, "host": "db.internal",
                         "port": 6432, "dbname": "app", "length": 64, "connect_timeout": 3})
    assert (r.role, r.host, r.port, r.dbname, r.length, r.connect_timeout) == (
        "App$user_1", "db.internal", 6432, "app", 64, 3)
    assert PostgresRotator({"role": "a" * 63, "admin_secret": ADMIN}).length == 32


def test_create_makes_random_passwords_without_touching_the_service() -> None:
    def no_secret(path: str) -> bytes:
        raise AssertionError(f"create() fetched {path}")

    ctx = RotationContext(path="db/app", current=None, secret=no_secret)
    made = {rotator("app").create(ctx) for _ in range(20)}
    assert len(made) == 20
    assert all(len(v) == 32 and set(v.decode()) <= set(string.ascii_letters + string.digits)
               for v in made)
    assert len(rotator("app", length=16).create(ctx)) == 16


def test_without_psycopg_the_steps_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in [m for m in sys.modules if m == "psycopg" or m.startswith("psycopg.")]:
        monkeypatch.setitem(sys.modules, module, None)
    ctx = RotationContext(path="db/app", current=None,
                          secret=lambda path: b"postgresql://admin:pw@127.0.0.1:1/postgres")
    r = rotator("app")
    assert len(r.create(ctx)) == 32  # needs no psycopg
    for step in (r.set, r.test, r.invalidate):
        with pytest.raises(ConfigurationError, match=r"airflow-provider-mlsecrets\[postgres\]"):
            step(ctx, NEW)


# --- what every connection must prove before a password goes out ----------------------
@pytest.fixture
def clean_pg_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in ("PGHOST", "PGHOSTADDR", "PGSERVICE"):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LocalHost",
                                  "/var/run/postgresql", "@abstract", "", "127.0.0.1,::1"])
def test_on_this_machine_scram_is_required_whatever_the_uri_says(
        clean_pg_env: pytest.MonkeyPatch, host: str) -> None:
    params = {"host": host, "sslmode": "disable", "require_auth": "password,md5,none"}
    assert pg_rotator._guarded(params, "here") == {
        "host": host, "sslmode": "disable", "require_auth": "scram-sha-256"}


@pytest.mark.parametrize("params", [
    {"host": "db.internal"},
    {"host": "10.0.0.5"},
    {"host": "127.0.0.1,db.internal"},  # any one remote entry
    {"host": "localhost", "hostaddr": "10.0.0.5"},  # hostaddr is where libpq connects
    {"host": "127.0.0.1", "service": "prod"},  # a service file may name any host
])
def test_off_this_machine_tls_must_be_verified(clean_pg_env: pytest.MonkeyPatch,
                                               params: dict[str, str]) -> None:
    for mode in ("disable", "allow", "prefer", "require", "verify-ca"):
        with pytest.raises(RotatorError, match=rf"db:5432 is not on this machine.*says "
                                               rf"sslmode={mode}: use sslmode=verify-full"):
            pg_rotator._guarded({**params, "sslmode": mode}, "db:5432")
    guarded = pg_rotator._guarded(params, "db:5432")  # left out: verify-full, not prefer
    assert (guarded["sslmode"], guarded["require_auth"]) == ("verify-full", "scram-sha-256")
    assert pg_rotator._guarded({**params, "sslmode": "verify-full"}, "db:5432") == guarded


def test_the_environment_decides_where_the_uri_is_silent(
        clean_pg_env: pytest.MonkeyPatch) -> None:
    assert "sslmode" not in pg_rotator._guarded({}, "x")  # the default socket
    clean_pg_env.setenv("PGHOST", "db.internal")
    assert pg_rotator._guarded({}, "x")["sslmode"] == "verify-full"
    assert "sslmode" not in pg_rotator._guarded({"host": "127.0.0.1"}, "x")
    clean_pg_env.setenv("PGHOSTADDR", "10.0.0.5")  # libpq takes it beside any host
    assert pg_rotator._guarded({"host": "127.0.0.1"}, "x")["sslmode"] == "verify-full"
    clean_pg_env.delenv("PGHOSTADDR")
    clean_pg_env.setenv("PGSERVICE", "prod")
    assert pg_rotator._guarded({"host": "127.0.0.1"}, "x")["sslmode"] == "verify-full"


def test_a_libpq_without_require_auth_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"needs libpq 16 or newer .* libpq 15\.4"):
        pg_rotator._libpq_check(150004)
    pg_rotator._libpq_check(160000)
    pg_rotator._libpq_check(psycopg.pq.version())  # the one these tests run with


def test_a_remote_host_without_verified_tls_is_refused_before_connecting(
        scram_postgres: ScramPostgres, role: Role, clean_pg_env: pytest.MonkeyPatch) -> None:
    """The admin URI's sslmode=prefer is fine on loopback, not for a configured remote
    host: the test login is refused before any connection is tried."""
    ctx = context(scram_postgres, scram_postgres.admin_uri + "?sslmode=prefer")
    rotator(role.name).test(ctx, OLD.encode())  # loopback: SCRAM alone
    remote = rotator(role.name, host="db.invalid", port=5432)
    for step in (remote.test, remote.invalidate):
        with pytest.raises(RotatorError, match=r"db\.invalid:5432 is not on this machine.*"
                                               r"sslmode=prefer") as caught:
            step(ctx, OLD.encode())
        assert_clean(caught.value, OLD, scram_postgres.superuser_password)


# --- the SCRAM verifier ---------------------------------------------------------------
@pytest.mark.parametrize("password", [
    "pencil",
    NEW.decode(),
    "p@ss w:rd/%'\"\\",
    "pässwörd",  # SASLprep: NFKC leaves it
    "\ufb01x\u00a0y\u00adz",  # ligature to "fi", no-break space to " ", soft hyphen dropped
    "a\u0007\u00e9",  # a control character: SASLprep refuses, the raw bytes are hashed
    "\u05d0a",  # mixed right-to-left and left-to-right: refused, raw bytes
])
def test_the_verifier_is_the_one_libpq_computes(scram_postgres: ScramPostgres,
                                                password: str) -> None:
    with scram_postgres.connect() as conn:
        theirs = conn.pgconn.encrypt_password(password.encode(), b"anyone",
                                              b"scram-sha-256").decode()
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$[^:]+:.+", theirs)
    assert match, theirs
    salt = base64.b64decode(match.group(2))
    assert scram_sha256_verifier(password, salt=salt, iterations=int(match.group(1))) == theirs
    assert scram_sha256_verifier(password) != scram_sha256_verifier(password)  # fresh salts


# --- set / test / invalidate against the server ---------------------------------------
def test_set_stores_a_verifier_so_the_new_password_works_and_the_old_fails(
        scram_postgres: ScramPostgres, role: Role) -> None:
    server = scram_postgres
    assert login_works(server, role.name, OLD)
    r = rotator(role.name)
    r.set(context(server), NEW)

    assert login_works(server, role.name, NEW.decode())
    assert not login_works(server, role.name, OLD)
    assert server.failed_logins(role.name) == ["28P01"]  # invalid_password

    stored = server.stored_password(role.name)
    assert stored is not None and stored.startswith("SCRAM-SHA-256$4096:")
    assert NEW.decode() not in stored

    log = server.log_text()
    logged_alter = re.findall(rf'ALTER ROLE "{role.name}" WITH PASSWORD (\S+)', log)
    assert logged_alter == [f"'{stored}'"]  # the statement was logged, with the verifier
    assert NEW.decode() not in log
    # the check above can fail: the fixture's CREATE ROLE sent its password in clear text
    assert OLD in log


def test_set_is_idempotent(scram_postgres: ScramPostgres, role: Role) -> None:
    r, ctx = rotator(role.name), context(scram_postgres)
    r.set(ctx, NEW)
    first = scram_postgres.stored_password(role.name)
    r.set(ctx, NEW)
    assert scram_postgres.stored_password(role.name) != first  # a new salt, same password
    assert login_works(scram_postgres, role.name, NEW.decode())
    r.test(ctx, NEW)
    r.invalidate(ctx, OLD.encode())


def test_test_accepts_the_working_password_and_refuses_a_wrong_one(
        scram_postgres: ScramPostgres, role: Role) -> None:
    r, ctx = rotator(role.name), context(scram_postgres)
    r.test(ctx, OLD.encode())
    with pytest.raises(RotatorError) as caught:
        r.test(ctx, NEW)
    message = str(caught.value)
    assert message.startswith(f"postgres rotator: could not log in as role '{role.name}' at "
                              f"127.0.0.1:{scram_postgres.port}: ")
    assert "password authentication failed" in message
    assert_clean(caught.value, NEW, OLD, scram_postgres.superuser_password)


def test_test_uses_the_configured_host_port_and_database(scram_postgres: ScramPostgres,
                                                         role: Role) -> None:
    server = scram_postgres
    # an admin URI for another server: only the configuration points at the real one
    elsewhere = server.admin_uri.replace(f":{server.port}/", ":1/")
    ctx = context(server, elsewhere)
    rotator(role.name, host="127.0.0.1", port=server.port, dbname="template1").test(
        ctx, OLD.encode())
    with pytest.raises(RotatorError, match=r'database "no_such_db" does not exist'):
        rotator(role.name, port=server.port, dbname="no_such_db").test(ctx, OLD.encode())
    with pytest.raises(RotatorError, match=r"at 127\.0\.0\.1:1: .*(refused|failed)"):
        rotator(role.name).test(ctx, OLD.encode())


def test_invalidate_passes_once_the_old_password_is_refused(scram_postgres: ScramPostgres,
                                                            role: Role) -> None:
    r, ctx = rotator(role.name), context(scram_postgres)
    r.set(ctx, NEW)
    r.invalidate(ctx, OLD.encode())
    r.invalidate(ctx, OLD.encode())  # idempotent
    r.invalidate(ctx, b"")  # an empty password never logs in


def test_invalidate_raises_while_the_old_password_still_works(
        scram_postgres: ScramPostgres, role: Role) -> None:
    r, ctx = rotator(role.name), context(scram_postgres)
    with pytest.raises(RotatorError, match=r"previous password .* still works") as caught:
        r.invalidate(ctx, OLD.encode())  # set never ran (or someone reset the password)
    assert_clean(caught.value, OLD, scram_postgres.superuser_password)
    r.set(ctx, OLD.encode())  # pending == previous by accident
    with pytest.raises(RotatorError, match="still works"):
        r.invalidate(ctx, OLD.encode())


def test_invalidate_does_not_mistake_other_failures_for_a_refused_password(
        scram_postgres: ScramPostgres, role: Role) -> None:
    server = scram_postgres
    ctx = context(server)
    # the old password still works, but the login fails after it, at the database
    with pytest.raises(RotatorError, match=r"could not confirm .*no_such_db") as caught:
        rotator(role.name, dbname="no_such_db").invalidate(ctx, OLD.encode())
    assert_clean(caught.value, OLD, server.superuser_password)
    # no server there at all
    with pytest.raises(RotatorError, match=r"could not confirm .* at 127\.0\.0\.1:1: "):
        rotator(role.name, port=1).invalidate(ctx, OLD.encode())


def test_invalidate_recognises_a_refusal_in_any_language(
        scram_postgres: ScramPostgres, role: Role, monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers with another lc_messages word the refusal differently: the rotator then
    compares it with how a random password is refused."""
    real: Callable[..., pg_rotator._Login] = pg_rotator._try_login

    def german(*args: Any) -> pg_rotator._Login:
        login = real(*args)
        reason = login.reason.replace("password authentication failed for user",
                                      "Passwort-Authentifizierung für Benutzer fehlgeschlagen:")
        return pg_rotator._Login(login.ok, login.used_password, reason, login.sqlstate)

    monkeypatch.setattr(pg_rotator, "_try_login", german)
    r, ctx = rotator(role.name), context(scram_postgres)
    r.set(ctx, NEW)
    r.invalidate(ctx, OLD.encode())
    with pytest.raises(RotatorError, match="could not confirm"):
        rotator(role.name, dbname="no_such_db").invalidate(ctx, NEW)


def test_a_server_that_asks_no_password_is_not_taken_as_proof(
        scram_postgres: ScramPostgres) -> None:
    """libpq (require_auth) refuses a login that skips SCRAM, and the error says so."""
    scram_postgres.create_role(TRUSTED_ROLE, OLD)  # pg_hba: trust for this role
    r, ctx = rotator(TRUSTED_ROLE), context(scram_postgres)
    refused = r"did not complete authentication; no password was sent: .*scram-sha-256"
    with pytest.raises(RotatorError, match=f"could not log in .*{refused}"):
        r.test(ctx, NEW)
    with pytest.raises(RotatorError, match=f"could not check the previous .*{refused}"):
        r.invalidate(ctx, OLD.encode())


def test_a_role_name_that_needs_quoting(scram_postgres: ScramPostgres) -> None:
    name = f"App$User_{uuid.uuid4().hex[:6]}"  # mixed case and $: only right when quoted
    scram_postgres.create_role(name, OLD)
    scram_postgres.create_role(name.lower(), OLD)  # what an unquoted name would alter
    r, ctx = rotator(name), context(scram_postgres)
    r.set(ctx, NEW)
    r.test(ctx, NEW)
    r.invalidate(ctx, OLD.encode())
    assert login_works(scram_postgres, name.lower(), OLD)  # untouched


# --- failures say what failed, and never a password -----------------------------------
@pytest.fixture
def errors(scram_postgres: ScramPostgres, role: Role) -> Iterator[list[RotatorError]]:
    """RotatorErrors from every failing path, each with its secrets at hand."""
    server = scram_postgres
    wrong_admin = server.admin_uri.replace("%40", "%41", 1)  # a wrong admin password
    cases: list[tuple[Callable[[], None], str]] = [
        (lambda: rotator("no_such_role").set(context(server), NEW), "42704"),
        (lambda: rotator(role.name).set(context(server, wrong_admin), NEW),
         "password authentication failed for user \"vault_admin\""),
        (lambda: rotator(role.name).set(context(server, "not a uri ="), NEW),
         "is not a libpq connection URI"),
        (lambda: rotator(role.name).set(
            context(server, f"host=127.0.0.1 password={OLD} bogus"), NEW),
         "is not a libpq connection URI"),
        (lambda: rotator(role.name).test(context(server), NEW), "could not log in"),
        (lambda: rotator(role.name).test(context(server), OLD.encode() + b"x"),
         "could not log in"),
        (lambda: rotator(role.name).test(context(server), b"\xffnot utf-8" + NEW),
         "not UTF-8"),
        (lambda: rotator(role.name).set(context(server), b""), "is empty"),
        (lambda: rotator(role.name).invalidate(context(server), OLD.encode()), "still works"),
        (lambda: rotator(role.name, port=1).invalidate(context(server), OLD.encode()),
         "could not confirm"),
        (lambda: rotator(role.name, port=1).set(context(server, server.admin_uri.replace(
            f":{server.port}/", ":1/")), NEW), "could not set"),
    ]
    found = []
    for call, expected in cases:
        with pytest.raises(RotatorError) as caught:
            call()
        assert expected in str(caught.value)
        found.append(caught.value)
    yield found


def test_no_error_holds_a_password(scram_postgres: ScramPostgres,
                                   errors: list[RotatorError]) -> None:
    password = scram_postgres.superuser_password
    for exc in errors:
        assert_clean(exc, NEW, OLD, password, scram_postgres.admin_uri,
                     password.replace("%", "%25"))


def test_a_known_secret_is_scrubbed_even_from_a_server_reason(
        scram_postgres: ScramPostgres, role: Role, monkeypatch: pytest.MonkeyPatch) -> None:
    """Second line of defence: a reason that quotes a password (it should not) is cut."""
    monkeypatch.setattr(pg_rotator, "_alter_password",
                        lambda uri, role, verifier, timeout: f"echo {NEW.decode()} {uri}")
    with pytest.raises(RotatorError) as caught:
        rotator(role.name).set(context(scram_postgres), NEW)
    assert "[redacted]" in str(caught.value)
    assert_clean(caught.value, NEW, scram_postgres.superuser_password)
