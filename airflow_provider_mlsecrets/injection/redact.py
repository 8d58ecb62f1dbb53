"""Our own redaction of a child's output, as a second line behind Airflow's masker: it knows
exactly which values were injected, and it covers values shorter than Airflow's masking
minimum (down to :data:`MIN_LENGTH` characters)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

MIN_LENGTH = 2
REPLACEMENT = "***"


def _alternation(values: Iterable[str]) -> re.Pattern[str] | None:
    ordered = sorted({v for v in values if len(v) >= MIN_LENGTH}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


class Redactor:
    """Replaces the given values in text; a multi-line value is given line by line too by
    :func:`..resolve.resolve`, since output is redacted one line at a time."""

    def __init__(self, values: Iterable[str]) -> None:
        values = set(values)
        self._pattern = _alternation(values)
        # as they appear inside JSON text: escaped, with and without ASCII escapes
        self._json_pattern = _alternation(
            values | {json.dumps(v)[1:-1] for v in values}
            | {json.dumps(v, ensure_ascii=False)[1:-1] for v in values})

    def __call__(self, text: str) -> str:
        return self._pattern.sub(REPLACEMENT, text) if self._pattern is not None else text

    def contains_secret(self, text: str, *, as_json: bool = False) -> bool:
        pattern = self._json_pattern if as_json else self._pattern
        return pattern is not None and pattern.search(text) is not None
