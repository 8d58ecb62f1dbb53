"""``airflow_connection``: rotate the password inside an Airflow connection stored in the
vault (as a URI or as Airflow's connection JSON) through another rotator.

The inner rotator sees only the password: ``current`` is the old password, ``create``
makes the new one, and ``set``/``test``/``invalidate`` get passwords, not connections.
Everything else in the connection (login, host, port, schema, extra) is kept as it was."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.injection.redact import Redactor
from airflow_provider_mlsecrets.rotation.interface import (
    RotationContext,
    Rotator,
    RotatorError,
    config_str,
)
from airflow_provider_mlsecrets.rotation.registry import load_rotator

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class _Connection:
    """A connection value split around its password."""

    text: str = dataclasses.field(repr=False)
    is_json: bool

    @classmethod
    def parse(cls, value: bytes) -> _Connection:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RotatorError("the stored connection is not UTF-8 text") from None
        is_json = text.lstrip().startswith("{")
        conn = cls(text, is_json)
        conn.fields()  # malformed: fail now, with a message that holds no value
        return conn

    def fields(self) -> dict[str, Any]:
        if self.is_json:
            try:
                data = json.loads(self.text)
            except ValueError:
                raise RotatorError("the stored connection is not valid JSON") from None
            if not isinstance(data, dict):
                raise RotatorError("the stored connection JSON is not an object")
            return {"login": data.get("login"), "password": data.get("password"),
                    "host": data.get("host"), "port": data.get("port"),
                    "schema": data.get("schema")}
        parts = urlsplit(self.text)
        if not parts.scheme or (parts.hostname is None and not parts.netloc):
            raise RotatorError("the stored connection is not a connection URI")
        return {"login": unquote(parts.username) if parts.username else None,
                "password": unquote(parts.password) if parts.password else None,
                "host": parts.hostname, "port": parts.port,
                "schema": unquote(parts.path.lstrip("/")) or None}

    @property
    def password(self) -> bytes | None:
        password = self.fields()["password"]
        return None if password is None else str(password).encode()

    def with_password(self, password: bytes) -> bytes:
        new = password.decode("utf-8")
        if self.is_json:
            data = json.loads(self.text)
            data["password"] = new
            return json.dumps(data, sort_keys=True).encode()
        parts = urlsplit(self.text)
        login = quote(unquote(parts.username), safe="") if parts.username else ""
        host = parts.netloc.rsplit("@", 1)[-1]
        netloc = f"{login}:{quote(new, safe='')}@{host}"
        return urlunsplit(parts._replace(netloc=netloc)).encode()


class AirflowConnectionRotator(Rotator):
    """Config: ``via`` (the inner rotator's name) and ``config`` (its settings). For
    ``via: postgres`` the connection's login, host, port and schema fill in ``role``,
    ``host``, ``port`` and ``dbname`` when the inner settings leave them out."""

    name = "airflow_connection"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.via = config_str(config, "via")
        if self.via == self.name:
            raise InvalidInput("rotator configuration: 'via' cannot be airflow_connection")
        inner = config.get("config", {})
        if not isinstance(inner, dict):
            raise InvalidInput("rotator configuration: 'config' must be a JSON object")
        self.inner_config = inner
        # validate now; for postgres the role may come from the connection later
        placeholder = {"role": "placeholder"} if self.via == "postgres" else {}
        self._validated = load_rotator(self.via, {**placeholder, **inner})

    def secret_paths(self) -> list[str]:
        return self._validated.secret_paths()

    def _inner(self, ctx: RotationContext) -> tuple[Rotator, RotationContext]:
        if ctx.current is None:
            raise RotatorError(f"{ctx.path} has no current connection to rotate the password "
                               "of; store one first")
        conn = _Connection.parse(ctx.current)
        config = dict(self.inner_config)
        if self.via == "postgres":
            f = conn.fields()
            for key, value in (("role", f["login"]), ("host", f["host"]), ("port", f["port"]),
                               ("dbname", f["schema"])):
                if key not in config and value is not None:
                    config[key] = value
        inner_ctx = dataclasses.replace(ctx, current=conn.password)
        return load_rotator(self.via, config), inner_ctx

    @staticmethod
    def _password(value: bytes) -> bytes:
        password = _Connection.parse(value).password
        if password is None:
            raise RotatorError("the connection has no password")
        return password

    def create(self, ctx: RotationContext) -> bytes:
        inner, inner_ctx = self._inner(ctx)
        if ctx.current is None:
            raise InvalidInput("the connection has no current value to rotate from")
        conn = _Connection.parse(ctx.current)
        return conn.with_password(self._guarded(lambda: inner.create(inner_ctx), inner_ctx))

    def set(self, ctx: RotationContext, pending: bytes) -> None:
        inner, inner_ctx = self._inner(ctx)
        password = self._password(pending)
        self._guarded(lambda: inner.set(inner_ctx, password), inner_ctx, password)

    def test(self, ctx: RotationContext, pending: bytes) -> None:
        inner, inner_ctx = self._inner(ctx)
        password = self._password(pending)
        self._guarded(lambda: inner.test(inner_ctx, password), inner_ctx, password)

    def invalidate(self, ctx: RotationContext, previous: bytes) -> None:
        password = _Connection.parse(previous).password
        if password is None:  # a connection that had no password: nothing to invalidate
            return
        inner, inner_ctx = self._inner(ctx)
        self._guarded(lambda: inner.invalidate(inner_ctx, password), inner_ctx, password)

    @staticmethod
    def _guarded(call: Callable[[], T], ctx: RotationContext, *values: bytes) -> T:
        """Run an inner step; its error is re-raised with every password this step knows
        redacted (the engine knows whole connections, not the bare passwords in them)."""
        try:
            return call()
        except Exception as exc:
            failure = exc
        known = [v for v in (ctx.current, *values) if v]
        redact = Redactor(v.decode("utf-8", "replace") for v in known)
        raise RotatorError(redact(f"{type(failure).__name__}: {failure}")) from None
