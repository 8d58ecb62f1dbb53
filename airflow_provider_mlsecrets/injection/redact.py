"""Our own redaction of a child's output, as a second line behind Airflow's masker: it knows
exactly which values were injected, and it covers values shorter than Airflow's masking
minimum (down to :data:`MIN_LENGTH` characters)."""

from __future__ import annotations

import re
from collections.abc import Iterable

MIN_LENGTH = 2
REPLACEMENT = "***"


class Redactor:
    def __init__(self, values: Iterable[str]) -> None:
        secrets = sorted({v for v in values if len(v) >= MIN_LENGTH}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, secrets))) if secrets else None
        self._values = tuple(secrets)

    def __call__(self, text: str) -> str:
        return self._pattern.sub(REPLACEMENT, text) if self._pattern is not None else text

    def contains_secret(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None
