"""Durations as people write them: ``90s``, ``15m``, ``12h``, ``30d``, ``2w``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pendulum

from airflow_provider_mlsecrets.errors import InvalidInput

_DURATION = re.compile(r"([1-9][0-9]{0,8})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(
            f"invalid duration {text!r}: write a positive number and a unit, "
            "s, m, h, d or w (for example 90s, 15m, 12h, 30d)"
        )
    number, unit = match.groups()
    try:
        return timedelta(**{_UNITS[unit]: int(number)})
    except OverflowError:
        raise InvalidInput(f"the duration {text!r} is too long") from None


def parse_moment(text: str, *, future: bool) -> datetime:
    """A moment, as a plain UTC datetime: a duration from now (``30d``; ago unless
    ``future``) or an ISO 8601 date or time (UTC when it names no zone)."""
    if _DURATION.fullmatch(text.strip()):
        delta = parse_duration(text)
        now = datetime.now(timezone.utc)
        try:
            return now + delta if future else now - delta
        except OverflowError:
            raise InvalidInput(f"{text!r} from now is beyond the calendar") from None
    try:
        moment = pendulum.parse(text, tz="UTC")
    except (ValueError, pendulum.parsing.exceptions.ParserError):
        raise InvalidInput(
            f"cannot read {text!r} as a time: give a duration such as 30d or a date and time "
            "such as 2027-01-31T12:00Z") from None
    if not isinstance(moment, datetime):
        raise InvalidInput(f"{text!r} is not a date or time")
    # a plain datetime in UTC: pendulum's subclass answers arithmetic with its own types
    # (an Interval, not a timedelta), which the code that compares moments does not expect
    utc = moment.astimezone(timezone.utc)
    return datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second,
                    utc.microsecond, tzinfo=timezone.utc)
