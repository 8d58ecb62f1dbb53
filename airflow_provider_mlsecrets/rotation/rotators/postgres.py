"""``postgres``: rotate the password of one PostgreSQL role.

The secret's value is the role's plain password (UTF-8). ``set`` sends the server a
SCRAM-SHA-256 verifier computed here, as libpq's ``PQencryptPasswordConn`` does, never the
password: an ``ALTER ROLE ... PASSWORD 'plain'`` would be written to the server log by
``log_statement`` or an error, and land in ``pg_stat_statements``. The verifier holds no
password (only salted, 4096-times-iterated keys).

PostgreSQL keeps one password per role, so the old password stops working the moment
``set`` runs; ``invalidate`` only checks that it really does.

psycopg (v3) is optional: ``pip install airflow-provider-mlsecrets[postgres]``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
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
    """Log in as ``user`` with ``password`` and run ``SELECT 1``."""
    try:
        import psycopg
        from psycopg.conninfo import make_conninfo
    except ImportError:
        raise ConfigurationError(MISSING_PSYCOPG) from None
    try:
        conninfo = make_conninfo("", **params)
        with psycopg.connect(conninfo, user=user, password=password,
                             connect_timeout=timeout, autocommit=True) as conn:
            used = bool(conn.pgconn.used_password)
            row = conn.execute("SELECT 1").fetchone()
            if row is None or row[0] != 1:
                return _Login(False, used, "SELECT 1 did not return 1", None)
            return _Login(True, used, "", None)
    except psycopg.Error as exc:
        pgconn = getattr(exc, "pgconn", None)
        return _Login(False, bool(getattr(pgconn, "used_password", False)), _reason(exc),
                      getattr(exc, "sqlstate", None))


def _alter_password(admin_uri: str, role: str, verifier: str, timeout: int) -> str | None:
    """``ALTER ROLE role WITH PASSWORD 'verifier'`` as the admin; why it failed, or None.

    A literal, not a query parameter: ALTER ROLE is a utility statement, which takes no
    server-side parameters (``$1``)."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        raise ConfigurationError(MISSING_PSYCOPG) from None
    statement = sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(verifier))
    failure: str | None = None
    try:
        with psycopg.connect(admin_uri, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute(statement)
    except psycopg.Error as exc:
        failure = _reason(exc)
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
    def _where(params: Mapping[str, str]) -> str:
        host = params.get("host") or params.get("hostaddr") or "the default host"
        return f"{host}:{params.get('port') or 5432}"

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
        failure = _alter_password(admin.uri, self.role, verifier, self.connect_timeout)
        if failure is not None:
            who = admin.params.get("user", "the admin user")
            raise self._fail(
                ctx, f"could not set the password of role {self.role!r} at "
                f"{self._where(admin.params)} as {who!r}: {failure}",
                password, verifier, *admin.secrets)

    def test(self, ctx: RotationContext, pending: bytes) -> None:
        """Log in as the role with ``pending``. A server that let the role in without
        asking for a password (trust, peer) proves nothing, so that fails too."""
        password = _text(pending, "pending password")
        admin = self._admin(ctx)
        target = self._target(admin)
        login = _try_login(target, self.role, password, self.connect_timeout)
        where = self._where(target)
        if not login.ok:
            raise self._fail(ctx, f"could not log in as role {self.role!r} at {where}: "
                                  f"{login.reason}", password, *admin.secrets)
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
        where = self._where(target)
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
