"""References: what a DAG names instead of a value.

* ``secret:PATH[@VERSION][#FIELD]``: a vault secret (a version; a field of a JSON value)
* ``conn:ID[.FIELD]``: an Airflow connection, whole (its URI) or one field: ``uri``,
  ``login``, ``password``, ``host``, ``port``, ``schema``, ``conn_type`` or a key of extra
* ``var:KEY``: an Airflow variable
* ``sealed:PATH:TOKEN``: a value sealed with ``mlsecrets seal PATH`` (safe in git); it opens
  only in the task, through the vault, as ``PATH``

They are parsed when the DAG is parsed (a typo fails the DAG file, not the run) and again
after templating, so a rendered field can only ever hold a reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.paths import parse_path

CONN_FIELDS = ("uri", "login", "password", "host", "port", "schema", "conn_type")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SECRET = re.compile(r"secret:(?P<path>[^@#]+)(?:@(?P<version>[1-9][0-9]{0,9}))?"
                     r"(?:#(?P<field>[A-Za-z0-9_.\-]{1,128}))?")
_CONN = re.compile(r"conn:(?P<id>[A-Za-z0-9_\-]{1,250})(?:\.(?P<field>[A-Za-z0-9_\-]{1,128}))?")
_VAR = re.compile(r"var:(?P<key>[A-Za-z0-9_.\-]{1,250})")
_SEALED = re.compile(r"sealed:(?P<path>[^:]+):(?P<token>mlsealed1\.[A-Za-z0-9_\-]+)")
FORMS = "secret:PATH[@VERSION][#FIELD], conn:ID[.FIELD], var:KEY or sealed:PATH:TOKEN"


@dataclass(frozen=True)
class Reference:
    kind: str  # "secret", "conn", "var" or "sealed"
    target: str
    version: int | None = None
    field: str | None = None
    token: str | None = None

    def __str__(self) -> str:
        """The reference as written, except that a sealed token is shortened."""
        text = f"{self.kind}:{self.target}"
        if self.token is not None:
            return f"{text}:{self.token[:18]}…"
        if self.version is not None:
            text += f"@{self.version}"
        if self.field is not None:
            text += ("#" if self.kind == "secret" else ".") + self.field
        return text


def parse_reference(text: object) -> Reference:
    """A reference, or :class:`InvalidInput` that says what a reference looks like (and
    never repeats the text, which might be a value pasted by mistake)."""
    if not isinstance(text, str):
        raise InvalidInput(f"a reference is a string ({FORMS}), not {type(text).__name__}")
    if m := _SECRET.fullmatch(text):
        parse_path(m["path"])
        version = int(m["version"]) if m["version"] else None
        return Reference("secret", m["path"], version, m["field"])
    if m := _CONN.fullmatch(text):
        return Reference("conn", m["id"], None, m["field"])
    if m := _VAR.fullmatch(text):
        return Reference("var", m["key"])
    if m := _SEALED.fullmatch(text):
        parse_path(m["path"])
        return Reference("sealed", m["path"], token=m["token"])
    raise InvalidInput(f"not a reference; write {FORMS} (values never go in a DAG)")


def parse_env(mapping: object) -> dict[str, Reference]:
    """Validate ``{ENV_NAME: reference}``."""
    if not isinstance(mapping, dict) or not mapping:
        raise InvalidInput("env must be a non-empty dict of {ENV_NAME: reference}")
    out = {}
    for name, text in mapping.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise InvalidInput(f"{name!r} is not an environment variable name")
        try:
            out[name] = parse_reference(text)
        except InvalidInput as exc:
            raise InvalidInput(f"env[{name!r}]: {exc}") from None
    return out
