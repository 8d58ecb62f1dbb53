"""The secret path grammar and the grant pattern language.

A path names one secret: ``segment(/segment)*``. Each segment starts with a letter,
digit or underscore and goes on with letters, digits, ``_``, ``.`` and ``-``; so
``.``, ``..`` and empty segments cannot be written, and no path can climb out of a
prefix a grant was written for. Patterns are paths whose segments may also be ``*``
(any one segment), ``**`` (any number of segments) or hold ``*`` as a wildcard within one
segment (``api_*``). A leading or inner ``**`` may match no segment (``**/key`` covers
``key``); a trailing one needs at least one (``ml/**`` covers ``ml/x``, not ``ml``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NewType

from airflow_provider_mlsecrets.errors import InvalidInput

SecretPath = NewType("SecretPath", str)

MAX_PATH_LENGTH = 256
MAX_SEGMENTS = 16
MAX_SEGMENT_LENGTH = 64
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_PATTERN_SEGMENT = re.compile(r"\*\*|[A-Za-z0-9_*][A-Za-z0-9_.\-*]*")
_PREFIX = re.compile(r"[A-Za-z0-9_.\-/]*")

GRAMMAR = (
    "a path is 1 to 16 segments joined by '/', each 1 to 64 characters from "
    "[A-Za-z0-9_.-] starting with a letter, digit or '_', at most 256 characters in all "
    "(for example 'ml/openai/api_key')"
)


def _show(text: str) -> str:
    """A path quoted for an error message, cut short and with control characters escaped."""
    shown = text if len(text) <= 80 else text[:77] + "..."
    return repr(shown)


def _check_shape(text: str, segment: re.Pattern[str], what: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    if not text or len(text) > MAX_PATH_LENGTH:
        raise InvalidInput(f"invalid {what} {_show(text)}: {GRAMMAR}")
    parts = text.split("/")
    if len(parts) > MAX_SEGMENTS or any(
        len(p) > MAX_SEGMENT_LENGTH or not segment.fullmatch(p) for p in parts
    ):
        raise InvalidInput(f"invalid {what} {_show(text)}: {GRAMMAR}")
    return parts


def parse_path(text: str) -> SecretPath:
    """Validate ``text`` as a secret path; raise :class:`InvalidInput` naming the grammar."""
    _check_shape(text, _SEGMENT, "path")
    return SecretPath(text)


def parse_prefix(text: str) -> str:
    """Validate a listing prefix: any leading part of a path, possibly empty."""
    if len(text) > MAX_PATH_LENGTH or not _PREFIX.fullmatch(text) or ".." in text.split("/"):
        raise InvalidInput(f"invalid prefix {_show(text)}: {GRAMMAR}")
    return text


def parse_pattern(text: str) -> str:
    """Validate a grant pattern (a path whose segments may be ``*``, ``**`` or hold ``*``)."""
    _check_shape(text, _PATTERN_SEGMENT, "pattern")
    if "***" in text:
        raise InvalidInput(f"invalid pattern {_show(text)}: '***' has no meaning")
    return text


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    parts = pattern.split("/")
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
            continue
        regex += "[^/]*".join(re.escape(piece) for piece in part.split("*"))
        regex += "" if last else "/"
    return re.compile(regex)


def matches(pattern: str, path: str) -> bool:
    """Whether ``path`` falls under the grant ``pattern``."""
    return _compile(pattern).fullmatch(path) is not None
