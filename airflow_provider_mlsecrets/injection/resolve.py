"""Turning references into values, inside the running task only.

``secret:`` references go to the vault as the pipeline principal with the task's identity
(an audited ``inject``); ``conn:`` and ``var:`` go through Airflow's own lookups, so they
work with whatever secrets backends are configured (ours audits them too). Every value and
every form derived from it is registered with Airflow's masker before anything runs, and
collected for our own redactor. Failures name the reference, never a value.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_mlsecrets.errors import (
    AuditError,
    KeyMissing,
    KeyProviderError,
    MLSecretsError,
    StoreError,
)
from airflow_provider_mlsecrets.injection.references import CONN_FIELDS, Reference

log = logging.getLogger(__name__)


class ResolutionError(Exception):
    """A reference could not be turned into a value; the message names only the reference.
    ``retryable``: the vault could not be reached (worth a retry), as opposed to a refusal."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class Resolved:
    env: dict[str, str] = field(default_factory=dict)
    sensitive: set[str] = field(default_factory=set)


def resolve(refs: dict[str, Reference], hook: Any) -> Resolved:
    from airflow_provider_mlsecrets._process import disable_core_dumps, refuse_inspection

    # the task process will hold the values, and so will the child it starts: no core file,
    # and no reading of its memory by another process of the same user (docs/injection.md)
    disable_core_dumps()
    if not refuse_inspection() and sys.platform.startswith("linux"):
        log.warning("mlsecrets: this task process could not be made undumpable; other "
                    "processes of its Unix user can read the injected values from its memory")
    out = Resolved()
    for name, ref in refs.items():
        value, derived = _resolve_one(ref, hook)
        out.env[name] = value
        for text in (value, *derived):
            if text:
                out.sensitive.add(text)
                # output is redacted line by line, so each line of a multi-line value too
                out.sensitive.update(line for line in text.splitlines() if len(line) >= 2)
    from airflow_provider_mlsecrets.masking import mask

    for value in out.sensitive:
        mask(value)
    return out


def _resolve_one(ref: Reference, hook: Any) -> tuple[str, list[str]]:
    try:
        if ref.kind == "secret":
            raw = hook.inject(ref.target, ref.version)
            return (_json_field(raw, ref) if ref.field else raw), [raw]
        if ref.kind == "sealed":
            return hook.unseal(ref.target, ref.token), []
        if ref.kind == "conn":
            return _connection_field(ref)
        return _variable(ref), []
    except ResolutionError:
        raise
    except (StoreError, KeyProviderError, AuditError) as exc:
        if isinstance(exc, KeyMissing):
            raise ResolutionError(f"{ref}: {exc}") from None
        raise ResolutionError(f"{ref}: the vault is unavailable ({exc})", retryable=True) from None
    except MLSecretsError as exc:
        raise ResolutionError(f"{ref}: {exc}") from None
    except Exception as exc:  # Airflow's not-found and access-denied types, among others
        raise ResolutionError(f"{ref}: {_describe(exc)}") from None


def _json_field(raw: str, ref: Reference) -> str:
    try:
        data = json.loads(raw)
        value = data[ref.field] if isinstance(data, dict) else None
    except (ValueError, KeyError):
        value = None
    if value is None:
        raise ResolutionError(f"{ref}: the value is not a JSON object with the field "
                              f"{ref.field!r}")
    return value if isinstance(value, str) else json.dumps(value)


def _connection_field(ref: Reference) -> tuple[str, list[str]]:
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(ref.target)
    derived = [v for v in (conn.password, conn.get_uri()) if v]
    name = ref.field or "uri"
    if name == "uri":
        return conn.get_uri(), derived
    if name in CONN_FIELDS:
        value = getattr(conn, name)
    else:
        value = conn.extra_dejson.get(name)
        if value is not None and not isinstance(value, str):
            value = json.dumps(value)
        if value is not None and conn.extra:
            derived.append(conn.extra)
    if value is None or value == "":
        raise ResolutionError(f"{ref}: the connection has no {name}")
    return str(value), derived


SECRET_KEY_PREFIX = "mlsecrets:"  # noqa: S105 - a key prefix # nosec B105


class ThroughAirflow:
    """The vault reached through Airflow itself, for workers that hold no vault settings at
    all: ``secret:PATH`` is looked up as the variable ``mlsecrets:PATH``, which falls through
    the Execution API to the API server, whose backend answers as the task's DAG (verified
    from the task's own token). Versions and sealed values need a direct route."""

    def inject(self, path: str, version: int | None = None) -> str:
        if version is not None:
            raise ResolutionError(f"secret:{path}@{version}: a version cannot be asked for "
                                  "through Airflow; give the worker MLSECRETS_URL and a token")
        from airflow.sdk import Variable

        value = Variable.get(SECRET_KEY_PREFIX + path)
        return value if isinstance(value, str) else json.dumps(value)

    def unseal(self, path: str, token: str) -> str:
        raise ResolutionError(f"sealed:{path}: sealed values cannot be opened through "
                              "Airflow; give the worker MLSECRETS_URL and a token")


def _variable(ref: Reference) -> str:
    from airflow.sdk import Variable

    value = Variable.get(ref.target)
    return value if isinstance(value, str) else json.dumps(value)


def _describe(exc: Exception) -> str:
    name = type(exc).__name__
    if "AccessDenied" in name or isinstance(exc, PermissionError):
        return "access denied"
    if "NotFound" in name or "not found" in str(exc).lower():
        return "not found"
    return f"lookup failed ({name})"
