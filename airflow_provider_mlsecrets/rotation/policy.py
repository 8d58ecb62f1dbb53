"""A secret's rotation policy: when it is due, which rotator makes the next value, how long
the previous value keeps working, and how long retired versions are kept.

Stored as canonical JSON in ``mlsecrets_secrets.rotation``, under the secret row's
integrity MAC: write access to the database cannot point a rotation at another service."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter

from airflow_provider_mlsecrets.durations import parse_duration
from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.rotation.interface import Rotator
from airflow_provider_mlsecrets.rotation.registry import load_rotator

DEFAULT_GRACE = "1h"
DEFAULT_RETENTION = "30d"
SHORT = timedelta(hours=1)  # intervals below this are allowed (tests) but warned about
MAX_CONFIG_BYTES = 16 * 1024


@dataclass(frozen=True)
class RotationPolicy:
    """``schedule`` is a duration (``30d``) or a five-field cron expression (UTC)."""

    schedule: str
    rotator: str
    config: Mapping[str, Any] = field(default_factory=dict)
    grace: str = DEFAULT_GRACE
    retention: str = DEFAULT_RETENTION

    def __post_init__(self) -> None:
        if self.interval is None and not croniter.is_valid(self.schedule):
            raise InvalidInput(
                f"invalid schedule {self.schedule!r}: give a duration such as 30d or 12h, or a "
                "cron expression such as '0 3 * * 1' (minute hour day month weekday, UTC)")
        if self.interval is None and len(self.schedule.split()) != 5:
            raise InvalidInput("a cron schedule has exactly five fields (no seconds field)")
        parse_duration(self.grace)
        parse_duration(self.retention)
        if len(self.to_json()) > MAX_CONFIG_BYTES:
            raise InvalidInput(f"the rotator configuration is over {MAX_CONFIG_BYTES} bytes")

    def load_rotator(self) -> Rotator:
        """The configured rotator (an unknown name or a bad configuration fails here)."""
        return load_rotator(self.rotator, self.config)

    @property
    def interval(self) -> timedelta | None:
        """The schedule as a fixed interval, or ``None`` for a cron schedule."""
        try:
            return parse_duration(self.schedule)
        except InvalidInput:
            return None

    @property
    def grace_period(self) -> timedelta:
        return parse_duration(self.grace)

    @property
    def retention_period(self) -> timedelta:
        return parse_duration(self.retention)

    @property
    def is_short(self) -> bool:
        """Rotating more often than hourly: allowed, but rarely meant outside tests."""
        interval = self.interval
        if interval is None:
            it = croniter(self.schedule)
            first = it.get_next(datetime)
            return bool(it.get_next(datetime) - first < SHORT)
        return interval < SHORT

    def next_due(self, after: datetime) -> datetime:
        interval = self.interval
        if interval is not None:
            return after + interval
        moment: datetime = croniter(self.schedule, after).get_next(datetime)
        return moment

    def to_json(self) -> str:
        return json.dumps({"schedule": self.schedule, "rotator": self.rotator,
                           "config": self.config, "grace": self.grace,
                           "retention": self.retention},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_json(cls, text: str) -> RotationPolicy:
        data = json.loads(text)
        return cls(schedule=data["schedule"], rotator=data["rotator"], config=data["config"],
                   grace=data["grace"], retention=data["retention"])


def parse_config(text: str, source: str) -> dict[str, Any]:
    """A rotator configuration: a JSON object (from ``--rotator-config FILE``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{source} is not valid JSON: {exc.msg} (line {exc.lineno})"
                           ) from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{source} must hold a JSON object of rotator settings")
    return data
