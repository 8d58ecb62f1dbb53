"""Results as JSON-ready data, one way for every surface that prints or answers them (the
CLI's ``--json``, the HTTP service)."""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from typing import Any


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data (dataclasses, datetimes and enums included)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value
