"""The alert rules and notifiers, from the JSON file ``MLSECRETS_ALERT_RULES`` names
(docs/alerts.md), with defaults for everything it leaves out. Validated whole when read, so
a mistake fails with what and where, not at the first alert.

The file::

    {"rules": {"denial_burst": {"count": 5, "window": "1m"}, "human_read": {"enabled": false}},
     "notifiers": [{"name": "security-mail",
                    "class": "airflow.providers.smtp.notifications.smtp.SmtpNotifier",
                    "kwargs": {"to": "security@example.com", "from_email": "vault@example.com"}}],
     "delivery": {"lease": "5m", "retry": "30s", "max_retry": "1h"}}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow_provider_mlsecrets.durations import parse_duration
from airflow_provider_mlsecrets.errors import ConfigurationError, InvalidInput
from airflow_provider_mlsecrets.paths import parse_pattern

SEVERITIES = ("low", "medium", "high", "critical")
SUBJECTS = ("principal", "client")
PARTS = ("subject", "text", "html", "json")  # what a notifier's keyword can be given
MAX_FILE = 256 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_CLASS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


@dataclass(frozen=True)
class RuleConfig:
    """One rule's settings; each rule reads the fields it names in :data:`OPTIONS`."""

    enabled: bool = True
    severity: str = "high"
    only_critical: bool = False  # human_read: only reads a second engineer approved
    paths: tuple[str, ...] = ("**",)  # human_read: path patterns
    count: int = 10  # denial_burst: this many denials ...
    window: timedelta = timedelta(minutes=5)  # ... within this window
    by: tuple[str, ...] = SUBJECTS  # denial_burst: per principal, per client address
    after: timedelta = timedelta(hours=25)  # the time-based rules: how long is too long


# rule -> (its defaults, the options it takes besides enabled and severity)
DEFAULTS: dict[str, tuple[RuleConfig, frozenset[str]]] = {
    "human_read": (RuleConfig(severity="high"), frozenset({"only_critical", "paths"})),
    "denial_burst": (RuleConfig(severity="high"), frozenset({"count", "window", "by"})),
    "new_dag_secret": (RuleConfig(severity="medium"), frozenset()),
    "rotation_failed": (RuleConfig(severity="high"), frozenset()),
    "audit_failed": (RuleConfig(severity="critical"), frozenset()),
    "audit_overdue": (RuleConfig(severity="high", after=timedelta(hours=25)),
                      frozenset({"after"})),
    "mark_stale": (RuleConfig(severity="high", after=timedelta(hours=1)), frozenset({"after"})),
    "rewrap_pending": (RuleConfig(severity="medium", after=timedelta(days=1)),
                       frozenset({"after"})),
}

# where each Airflow notifier takes our message, for the ones we know
KNOWN_NOTIFIERS: dict[str, dict[str, str]] = {
    "airflow.providers.smtp.notifications.smtp.SmtpNotifier":
        {"subject": "subject", "html_content": "html"},
    "airflow.providers.http.notifications.http.HttpNotifier": {"json": "json"},
    "airflow.providers.slack.notifications.slack.SlackNotifier": {"text": "text"},
    "airflow.providers.slack.notifications.slack_webhook.SlackWebhookNotifier":
        {"text": "text"},
}


@dataclass(frozen=True)
class NotifierSpec:
    """An Airflow notifier by class path, its keyword arguments from the file, and which of
    its keywords receive our subject, text, HTML or JSON."""

    name: str
    class_path: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    message: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    lease: timedelta = timedelta(minutes=5)  # a claimed alert is sent again after this
    retry: timedelta = timedelta(seconds=30)  # first retry; doubles per failure ...
    max_retry: timedelta = timedelta(hours=1)  # ... up to this


@dataclass(frozen=True)
class AlertConfig:
    rules: Mapping[str, RuleConfig]
    notifiers: tuple[NotifierSpec, ...] = ()
    delivery: Delivery = Delivery()
    source: str = "the defaults"

    def rule(self, name: str) -> RuleConfig | None:
        """The rule's settings if it is on."""
        found = self.rules.get(name)
        return found if found is not None and found.enabled else None


def default_config() -> AlertConfig:
    return AlertConfig(rules={name: rule for name, (rule, _) in DEFAULTS.items()})


def load(path: Path | None) -> AlertConfig:
    """The configuration in ``path`` over the defaults (the defaults alone for ``None``)."""
    if path is None:
        return default_config()
    where = f"MLSECRETS_ALERT_RULES ({path})"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read {where}: {exc.strerror}") from None
    if len(raw) > MAX_FILE:
        raise ConfigurationError(f"{where} is larger than {MAX_FILE} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{where} is not JSON: {exc}") from None
    try:
        return parse(data, str(path))
    except InvalidInput as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def parse(data: Any, source: str = "the file") -> AlertConfig:
    """Validate a decoded file; :class:`InvalidInput` says what is wrong and where."""
    top = _object(data, "the file", {"rules", "notifiers", "delivery"})
    rules = {name: rule for name, (rule, _) in DEFAULTS.items()}
    for name, given in _object(top.get("rules", {}), "rules", set(DEFAULTS)).items():
        rules[name] = _rule(name, given)
    notifiers = tuple(_notifier(i, n) for i, n in enumerate(_list(top.get("notifiers", []),
                                                                   "notifiers")))
    names = [n.name for n in notifiers]
    if len(set(names)) != len(names):
        raise InvalidInput("notifiers: two notifiers share a name; give each its own")
    delivery = Delivery()
    for key, value in _object(top.get("delivery", {}), "delivery",
                              {"lease", "retry", "max_retry"}).items():
        delivery = replace(delivery, **{key: _duration(value, f"delivery.{key}")})
    if delivery.retry > delivery.max_retry:
        raise InvalidInput("delivery.retry is longer than delivery.max_retry")
    return AlertConfig(rules=rules, notifiers=notifiers, delivery=delivery, source=source)


def _rule(name: str, given: Any) -> RuleConfig:
    rule, options = DEFAULTS[name]
    where = f"rules.{name}"
    values: dict[str, Any] = {}
    for key, value in _object(given, where, {"enabled", "severity", *options}).items():
        at = f"{where}.{key}"
        if key in ("enabled", "only_critical"):
            values[key] = _bool(value, at)
        elif key == "severity":
            if value not in SEVERITIES:
                raise InvalidInput(f"{at} must be one of {', '.join(SEVERITIES)}")
            values[key] = value
        elif key == "paths":
            patterns = _list(value, at)
            if not patterns:
                raise InvalidInput(f"{at} is empty; give at least one pattern, such as **")
            values[key] = tuple(_pattern(p, at) for p in patterns)
        elif key == "count":
            if type(value) is not int or not 1 <= value <= 1_000_000:
                raise InvalidInput(f"{at} must be a whole number from 1 to 1000000")
            values[key] = value
        elif key == "by":
            subjects = _list(value, at)
            if not subjects or any(s not in SUBJECTS for s in subjects):
                raise InvalidInput(f"{at} must list one or both of {', '.join(SUBJECTS)}")
            values[key] = tuple(dict.fromkeys(subjects))
        else:  # window, after
            values[key] = _duration(value, at)
    return replace(rule, **values)


def _notifier(index: int, given: Any) -> NotifierSpec:
    where = f"notifiers[{index}]"
    spec = _object(given, where, {"name", "class", "kwargs", "message"})
    for key in ("name", "class"):
        if key not in spec:
            raise InvalidInput(f"{where} needs a {key!r}")
    name, class_path = spec["name"], spec["class"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(f"{where}.name must be 1 to 64 characters from [A-Za-z0-9_.-]")
    if not isinstance(class_path, str) or not _CLASS.fullmatch(class_path):
        raise InvalidInput(f"{where}.class must be a dotted class path, such as "
                           "airflow.providers.smtp.notifications.smtp.SmtpNotifier")
    kwargs = _object(spec.get("kwargs", {}), f"{where}.kwargs", None)
    message = dict(KNOWN_NOTIFIERS.get(class_path, {}))
    if "message" in spec:
        message = {}
        for keyword, part in _object(spec["message"], f"{where}.message", None).items():
            if part not in PARTS:
                raise InvalidInput(f"{where}.message.{keyword} must be one of "
                                   f"{', '.join(PARTS)}")
            message[keyword] = part
    if not message:
        raise InvalidInput(f"{where}: say which keyword arguments of {class_path} receive the "
                           "alert, e.g. \"message\": {\"text\": \"text\"} (parts: "
                           f"{', '.join(PARTS)})")
    clash = sorted(set(message) & set(kwargs))
    if clash:
        raise InvalidInput(f"{where}.kwargs sets {', '.join(clash)}, which the alert fills in")
    return NotifierSpec(name=name, class_path=class_path, kwargs=kwargs, message=message)


def _object(value: Any, where: str, allowed: set[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object")
    if allowed is not None:
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise InvalidInput(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                               f"{', '.join(sorted(allowed))}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be a JSON list")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{where} must be true or false")
    return value


def _duration(value: Any, where: str) -> timedelta:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a duration such as \"90s\", \"15m\" or \"25h\"")
    try:
        return parse_duration(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None


def _pattern(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must hold path patterns (strings)")
    try:
        return parse_pattern(value)
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None
