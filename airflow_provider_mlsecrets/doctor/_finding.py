"""A finding: what the doctor saw, how bad it is, and what to do about it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["hazard", "warning", "ok"]
ORDER: dict[str, int] = {"hazard": 0, "warning": 1, "ok": 2}


@dataclass(frozen=True)
class Finding:
    """One line of the report. ``check`` is a stable identifier for scripts (``--json``);
    ``finding`` and ``fix`` are sentences for people. Neither ever holds a secret value."""

    check: str
    severity: Severity
    finding: str
    fix: str = ""


def mode_of(path: Path) -> int | None:
    """The permission bits of ``path`` (not following a final symlink's target's owner),
    ``None`` if it does not exist."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def describe_mode(path: Path, mode: int) -> str:
    try:
        owner = path.owner()
    except (KeyError, OSError):
        owner = str(os.stat(path).st_uid)
    return f"{path} (mode {mode:04o}, owner {owner})"
