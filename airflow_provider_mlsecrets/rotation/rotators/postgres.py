"""``postgres``: rotate the password of one PostgreSQL role.

The secret's value is the role's plain password (UTF-8). ``set`` sends the server a
SCRAM-SHA-256 verifier computed here, as libpq's ``PQencryptPasswordConn`` does, never the
password: an ``ALTER ROLE ... PASSWORD 'plain'`` would be written to the server log by
``log_statement`` or an error, and land in ``pg_stat_statements``. The verifier holds no
password (only salted, 4096-times-iterated keys).

PostgreSQL keeps one password per role, so the old password stops working the moment
``set`` runs; ``invalidate`` only checks that it really does.

Every connection (the admin's and each login as the role) is made with libpq's
``require_auth=scram-sha-256``: libpq then refuses a server that asks for a cleartext or MD5
password, or lets the client in unauthenticated, or ends SCRAM without proving that it holds
the verifier (its ServerSignature), before any password, or anything sent after login, leaves
this process. A fake server on the configured host therefore learns no password. Off
loopback the connection must also verify the server's TLS certificate
(``sslmode=verify-full``), so no one on the network can stand in for the server. Neither
rule can be switched off from the configuration.

psycopg (v3) is optional: ``pip install airflow-provider-mlsecrets[postgres]``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import string
import stringprep
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from airflow_provider_mlsecrets.errors import ConfigurationError, InvalidInput
from airflow_provider_mlsecrets.paths import parse_path
from airflow_provider_mlsecrets.rotation.interface import (
    RotationContext,
    Rotator,
    RotatorError,
    config_int,
    config_str,
)

ALPHABET = string.ascii_letters + string.digits
# what an unquoted identifier may hold (ASCII only), at most NAMEDATALEN - 1 bytes
ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
SCRAM_ITERATIONS = 4096  # libpq's default (scram_iterations)
SCRAM_SALT_BYTES = 16  # libpq's SCRAM_DEFAULT_SALT_LEN
MISSING_PSYCOPG = ("the postgres rotator needs psycopg 3: "
                   "install airflow-provider-mlsecrets[postgres]")
# Connection settings of the admin URI that are the admin's own credentials: never reused
# for the test login as the rotated role. Everything else (sslmode, sslrootcert, options)
# is, so the test connects the way the admin does.
ADMIN_ONLY = frozenset({"user", "password", "passfile", "sslcert", "sslkey", "sslpassword",
                        "service"})
REDACTED = "[redacted]"
#: libpq refuses any server that does not complete SCRAM-SHA-256 (cleartext, md5, trust...).
REQUIRE_AUTH = "scram-sha-256"
LIBPQ_WITH_REQUIRE_AUTH = 160000  # require_auth came with libpq 16
#: libpq's words for a server refused by ``require_auth``, or caught faking SCRAM.
AUTH_REFUSED = ("authentication method requirement", "incorrect server signature")


# --- SCRAM-SHA-256 --------------------------------------------------------------------
def _saslprep(password: str) -> bytes:
    """The password bytes SCRAM hashes, as PostgreSQL's ``pg_saslprep`` and its callers
    decide them: ASCII as is; otherwise RFC 4013 SASLprep, or the raw UTF-8 bytes when
    SASLprep rejects the string (a prohibited or unassigned character, bad bidi)."""
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    mapped = "".join(" " if stringprep.in_table_c12(c) else c
                     for c in password if not stringprep.in_table_b1(c))
    normal = unicodedata.normalize("NFKC", mapped)
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
                  stringprep.in_table_a1)
    if any(check(c) for c in normal for check in prohibited):
        return raw
    if any(stringprep.in_table_d1(c) for c in normal) and (
            any(stringprep.in_table_d2(c) for c in normal)
            or not stringprep.in_table_d1(normal[0]) or not stringprep.in_table_d1(normal[-1])):
        return raw
    return normal.encode("utf-8")


def scram_sha256_verifier(password: str, *, salt: bytes | None = None,
                          iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677):
    ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, base64. A server given
    this in ``ALTER ROLE ... PASSWORD`` stores it as is, so the password never leaves
    here. ``salt`` is random unless given (tests compare with libpq)."""
    salt = secrets.token_bytes(SCRAM_SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


# --- what a connection must prove before a password goes out ---------------------------
def _where(params: Mapping[str, str]) -> str:
    """``host:port`` for messages (never a user or password)."""
    host = params.get("host") or params.get("hostaddr") or "the default host"
    return f"{host}:{params.get('port') or 5432}"


def _is_local(entry: str) -> bool:
    """A libpq host entry that stays on this machine: a socket directory, the default
    socket (empty), ``localhost`` or a loopback address."""
    entry = entry.strip()
    if not entry or entry.startswith(("/", "@")) or entry.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(entry).is_loopback
    except ValueError:
        return False


def _stays_local(params: Mapping[str, str]) -> bool:
    """Whether every place libpq may connect to is on this machine. A setting the
    parameters leave out comes from the environment (``PGHOST``, ``PGHOSTADDR``), and a
    service file can name any host, so a service counts as remote."""
    if params.get("service") or os.environ.get("PGSERVICE"):
        return False
    entries: list[str] = []
    for key, variable in (("host", "PGHOST"), ("hostaddr", "PGHOSTADDR")):
        value = params.get(key) or os.environ.get(variable) or ""
        entries.extend(value.split(","))
    return all(_is_local(entry) for entry in entries)


def _guarded(params: Mapping[str, str], where: str) -> dict[str, str]:
    """``params`` as every connection of this rotator must use them: SCRAM-SHA-256 to the
    end (whatever the URI says about ``require_auth``) and, off this machine, a verified
    TLS certificate. A URI that asks for less off loopback is refused, not upgraded
    silently, so the operator learns that it was unsafe."""
    guarded = {**params, "require_auth": REQUIRE_AUTH}
    if _stays_local(guarded):
        return guarded
    mode = guarded.get("sslmode")
    if mode is None:
        guarded["sslmode"] = "verify-full"
    elif mode != "verify-full":
        raise RotatorError(
            f"postgres rotator: {where} is not on this machine, so the connection must verify "
            f"the server's TLS certificate, but the admin URI says sslmode={mode}: use "
            "sslmode=verify-full (with sslrootcert=<CA file> or sslrootcert=system)")
    return guarded


def _refusal_hint(reason: str) -> str:
    """What to do about a server that would not prove it knows the verifier."""
    if not any(words in reason for words in AUTH_REFUSED):
        return ""
    return ("; no password was sent: only a server that completes SCRAM-SHA-256 gets one "
            "(pg_hba.conf method scram-sha-256, not trust, peer, password or md5); check that "
            "this is the real server")


def _libpq_check(version: int) -> None:
    """Refuse a libpq without ``require_auth`` (``version`` as ``PQlibVersion`` gives it):
    it would answer a cleartext password request."""
    if version < LIBPQ_WITH_REQUIRE_AUTH:
        raise ConfigurationError(
            f"the postgres rotator needs libpq 16 or newer (for require_auth), but psycopg "
            f"uses libpq {version // 10000}.{version % 10000}: install psycopg[binary] "
            "(which bundles a current libpq) or upgrade the system libpq")


# --- talking to the server (the only code that imports psycopg) -----------------------
@dataclass(frozen=True)
class _Login:
    """How one login went. Holds only text, never the exception: psycopg's error keeps
    the connection object, whose repr shows the password."""

    ok: bool
    used_password: bool  # the server asked for a password (False: trust, peer...)
    reason: str  # why it failed ("" when ok)
    sqlstate: str | None


def _reason(exc: Exception) -> str:
    """The first line of a psycopg error (plus the list under it for "All failures
    were:"), and its SQLSTATE when psycopg knows it; no DETAIL, HINT or statement."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    if reason.endswith(":") and len(lines) > 1:
        reason += " " + "; ".join(lines[1:4])
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{reason} (SQLSTATE {sqlstate})" if sqlstate else reason


def _try_login(params: Mapping[str, str], user: str, password: str, timeout: int) -> _Login:
    """Log in as ``user`` with ``password`` (SCRAM only: see :func:`_guarded`) and run
    ``SELECT 1``."""
    try:
        import psycopg
        from psycopg.conninfo import make_conninfo
    except ImportError:
        raise ConfigurationError(MISSING_PSYCOPG) from None
    _libpq_check(psycopg.pq.version())
    guarded = _guarded({**params, "user": user, "password": password,
                        "connect_timeout": str(timeout)}, _where(params))
    try:
        conninfo = make_conninfo("", **guarded)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            used = bool(conn.pgconn.used_password)
            row = conn.execute("SELECT 1").fetchone()
            if row is None or row[0] != 1:
                return _Login(False, used, "SELECT 1 did not return 1", None)
            return _Login(True, used, "", None)
    except psycopg.Error as exc:
        pgconn = getattr(exc, "pgconn", None)
        return _Login(False, bool(getattr(pgconn, "used_password", False)), _reason(exc),
                      getattr(exc, "sqlstate", None))


def _alter_password(admin: Mapping[str, str], role: str, verifier: str,
                    timeout: int) -> str | None:
    """``ALTER ROLE role WITH PASSWORD 'verifier'`` as the admin (``admin``: the parsed
    admin URI; SCRAM only, see :func:`_guarded`); why it failed, or None.

    A literal, not a query parameter: ALTER ROLE is a utility statement, which takes no
    server-side parameters (``$1``)."""
    try:
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import make_conninfo
    except ImportError:
        raise ConfigurationError(MISSING_PSYCOPG) from None
    _libpq_check(psycopg.pq.version())
    guarded = _guarded({**admin, "connect_timeout": str(timeout)}, _where(admin))
    statement = sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(verifier))
    failure: str | None = None
    try:
        with psycopg.connect(make_conninfo("", **guarded), autocommit=True) as conn:
            conn.execute(statement)
    except psycopg.Error as exc:
        failure = _reason(exc)
        failure += _refusal_hint(failure)
    return failure


def _parse_conninfo(text: str) -> dict[str, str] | None:
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise ConfigurationError(MISSING_PSYCOPG) from None
    try:
        parsed = conninfo_to_dict(text)
    except Exception:  # its message may quote part of the URI, password included
        return None
    return {key: str(value) for key, value in parsed.items() if value is not None}


# --- the rotator ----------------------------------------------------------------------
def _scrub(message: str, known: Iterable[str]) -> str:
    """``message`` with every known secret string replaced (a second line of defence: the
    messages are built from host, port, role and server reasons)."""
    for value in sorted({k for k in known if k}, key=len, reverse=True):
        message = message.replace(value, REDACTED)
    return message


def _text(value: bytes, what: str) -> str:
    """``value`` as text. The error is raised outside the ``except``: a UnicodeDecodeError
    holds the whole value (``.object``) and would stay reachable as ``__context__``."""
    text: str | None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if not text:
        raise RotatorError(f"postgres rotator: the {what} is empty or not UTF-8 text")
    if "\x00" in text:
        raise RotatorError(f"postgres rotator: the {what} contains a NUL character")
    return text


@dataclass(frozen=True)
class _Admin:
    """The admin secret: a libpq URI and its parsed settings (kept out of any repr)."""

    uri: str = field(repr=False)
    params: dict[str, str] = field(repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        password = self.params.get("password", "")
        return (self.uri, password, quote(password, safe=""))


class PostgresRotator(Rotator):
    """Config: ``role`` (the role whose password rotates), ``admin_secret`` (vault path of
    a libpq URI of a role allowed to ALTER it), ``host``/``port``/``dbname`` (where to test
    the new password; default the admin URI's, dbname else ``postgres``), ``length``
    (16 to 128, default 32; letters and digits) and ``connect_timeout`` (1 to 120 s, default
    10). ``role`` is taken literally (case-sensitive) and always quoted as an identifier."""

    name = "postgres"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.role = config_str(config, "role")
        if not ROLE_NAME.fullmatch(self.role):
            raise InvalidInput(
                "rotator configuration: 'role' must be a PostgreSQL role name: 1 to 63 "
                "characters from [A-Za-z0-9_$], not starting with a digit or '$'")
        self.admin_secret = config_str(config, "admin_secret")
        try:
            parse_path(self.admin_secret)
        except InvalidInput as exc:
            raise InvalidInput(
                f"rotator configuration: 'admin_secret' must be a vault path ({exc})") from None
        self.host = self._optional_str(config, "host")
        self.dbname = self._optional_str(config, "dbname")
        self.port = (None if config.get("port") is None
                     else config_int(config, "port", default=5432, low=1, high=65535))
        self.length = config_int(config, "length", default=32, low=16, high=128)
        self.connect_timeout = config_int(config, "connect_timeout", default=10, low=1,
                                          high=120)

    @staticmethod
    def _optional_str(config: Mapping[str, Any], key: str) -> str | None:
        if config.get(key) is None:
            return None
        value = config_str(config, key)
        if "\x00" in value or value != value.strip():
            raise InvalidInput(f"rotator configuration: {key!r} has a NUL or outer spaces")
        return value

    # -- helpers ---------------------------------------------------------------------
    def _admin(self, ctx: RotationContext) -> _Admin:
        uri = _text(ctx.secret(self.admin_secret), f"admin secret {self.admin_secret!r}")
        params = _parse_conninfo(uri)
        if params is None:
            raise RotatorError(f"postgres rotator: the admin secret {self.admin_secret!r} "
                               "is not a libpq connection URI (postgresql://user:pw@host/db)")
        return _Admin(uri, params)

    def _target(self, admin: _Admin) -> dict[str, str]:
        """Where the role logs in to test a password: the admin's server and TLS
        settings, with ``host``/``port``/``dbname`` from the configuration if given."""
        params = {k: v for k, v in admin.params.items() if k not in ADMIN_ONLY}
        if self.host is not None:
            params["host"] = self.host
            params.pop("hostaddr", None)  # it would override the configured host
        if self.port is not None:
            params["port"] = str(self.port)
        params["dbname"] = self.dbname or params.get("dbname") or "postgres"
        return params

    @staticmethod
    def _fail(ctx: RotationContext, message: str, *known: str) -> RotatorError:
        current = (ctx.current or b"").decode("utf-8", "replace")
        return RotatorError(_scrub(f"postgres rotator: {message}", (*known, current)))

    # -- the four steps --------------------------------------------------------------
    def secret_paths(self) -> list[str]:
        return [self.admin_secret]

    def create(self, ctx: RotationContext) -> bytes:
        return "".join(secrets.choice(ALPHABET) for _ in range(self.length)).encode()

    def set(self, ctx: RotationContext, pending: bytes) -> None:
        """Store the SCRAM verifier of ``pending`` for the role. Running it again with the
        same value changes only the salt, so it is idempotent."""
        password = _text(pending, "pending password")
        admin = self._admin(ctx)
        verifier = scram_sha256_verifier(password)
        failure = _alter_password(admin.params, self.role, verifier, self.connect_timeout)
        if failure is not None:
            who = admin.params.get("user", "the admin user")
            raise self._fail(
                ctx, f"could not set the password of role {self.role!r} at "
                f"{_where(admin.params)} as {who!r}: {failure}",
                password, verifier, *admin.secrets)

    def test(self, ctx: RotationContext, pending: bytes) -> None:
        """Log in as the role with ``pending``. Only a server that completes SCRAM proves
        anything (and gets no password otherwise); a login without a password (trust, peer)
        is refused by libpq, and checked here again."""
        password = _text(pending, "pending password")
        admin = self._admin(ctx)
        target = self._target(admin)
        login = _try_login(target, self.role, password, self.connect_timeout)
        where = _where(target)
        if not login.ok:
            raise self._fail(ctx, f"could not log in as role {self.role!r} at {where}: "
                                  f"{login.reason}{_refusal_hint(login.reason)}",
                             password, *admin.secrets)
        if not login.used_password:
            raise self._fail(
                ctx, f"the server at {where} let role {self.role!r} in without asking for a "
                "password (trust or peer in pg_hba.conf?), so the password was not tested",
                password, *admin.secrets)

    def invalidate(self, ctx: RotationContext, previous: bytes) -> None:
        """Check that ``previous`` no longer logs in (``set`` already replaced it: a role
        has one password). Raise if it still works or the check cannot tell."""
        if not previous:
            return  # PostgreSQL never accepts an empty password
        password = _text(previous, "previous password")
        admin = self._admin(ctx)
        target = self._target(admin)
        where = _where(target)
        known = (password, *admin.secrets)
        login = _try_login(target, self.role, password, self.connect_timeout)
        if login.ok and login.used_password:
            raise self._fail(
                ctx, f"the previous password of role {self.role!r} still works at {where} "
                "(the new one was reset, or equals the old one)", *known)
        if login.ok:
            raise self._fail(
                ctx, f"the server at {where} lets role {self.role!r} in without a password "
                "(trust or peer in pg_hba.conf?), so no password of it can be revoked",
                *known)
        if _refusal_hint(login.reason):
            raise self._fail(
                ctx, f"could not check the previous password of role {self.role!r} at "
                f"{where}: {login.reason}{_refusal_hint(login.reason)}", *known)
        if login.sqlstate == "28P01" or (
                login.used_password and "password authentication failed" in login.reason):
            return
        # Not the English message (lc_messages) or an unknown failure: compare with how a
        # surely wrong password fails. The same refusal after the password exchange means
        # the previous one is refused as a wrong password.
        control = _try_login(target, self.role, secrets.token_urlsafe(24),
                             self.connect_timeout)
        if (not control.ok and control.used_password and login.used_password
                and control.reason == login.reason):
            return
        raise self._fail(
            ctx, f"could not confirm that the previous password of role {self.role!r} no "
            f"longer works at {where}: {login.reason}", *known)
