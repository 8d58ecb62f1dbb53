"""Delivering raised alerts through the configured notifiers, apart from raising them.

A sender claims an undelivered alert by check-and-set (``claimed_until``, a lease), sends it
through each notifier that has not had it yet, notes each success at once, and releases it:
delivered when every notifier has it, else retried after a backoff that doubles per failed
attempt (``delivery.retry`` up to ``delivery.max_retry``). No transaction is open while a
notifier runs. So each notifier gets each alert once, and once more only if a sender died
between sending and noting it (the lease then runs out and another sender takes it up); a
failing notifier delays an alert, never drops it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, and_, func, or_, select, update

from airflow_provider_mlsecrets.alerts import notify
from airflow_provider_mlsecrets.alerts.config import AlertConfig, NotifierSpec
from airflow_provider_mlsecrets.alerts.message import Message
from airflow_provider_mlsecrets.audit.record import format_ts
from airflow_provider_mlsecrets.store.models import Alert

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.service._core import Core

MAX_PER_PASS = 100
log = logging.getLogger(__name__)
_ALERTS = cast(Table, Alert.__table__)
Send = Callable[[NotifierSpec, Message], None]


@dataclass
class Delivered:
    sent: int = 0  # alerts every notifier now has
    failed: int = 0  # alerts left for a retry
    pending: int = 0  # undelivered alerts left, all told
    errors: list[str] = field(default_factory=list)


def message_of(row: Alert | object, vault_id: str) -> Message:
    a = cast(Alert, row)
    try:
        details = json.loads(a.details or "{}")
    except ValueError:
        details = {}
    return Message(alert_id=a.id, rule=a.rule, severity=a.severity, summary=a.summary,
                   event_ts=a.event_ts, raised_at=format_ts(a.raised_at),
                   principal=a.principal, path=a.path, chain=a.chain, seq=a.seq,
                   request_id=a.request_id, vault_id=vault_id,
                   details=details if isinstance(details, dict) else {})


def backoff(config: AlertConfig, attempts: int) -> timedelta:
    first, ceiling = config.delivery.retry, config.delivery.max_retry
    steps = min(max(attempts - 1, 0), 30)
    return ceiling if first * 2 ** steps > ceiling else first * 2 ** steps


class Sender:
    def __init__(self, core: Core, send: Send = notify.send) -> None:
        self._core = core
        self._send = send
        self.name = f"{socket.gethostname()[:40]}:{os.getpid()}"

    def run(self, config: AlertConfig, now: datetime) -> Delivered:
        result = Delivered()
        if config.notifiers:
            for alert_id in self._due(now):
                if self._claim(alert_id, config, now):
                    self._deliver(alert_id, config, now, result)
        with self._core.transaction() as session:
            result.pending = int(session.execute(select(func.count()).select_from(_ALERTS)
                                                 .where(_ALERTS.c.delivered_at.is_(None)))
                                 .scalar_one())
        return result

    def _due(self, now: datetime) -> list[int]:
        with self._core.transaction() as session:
            return list(session.execute(
                select(_ALERTS.c.id).where(
                    _ALERTS.c.delivered_at.is_(None),
                    or_(_ALERTS.c.next_attempt_at.is_(None), _ALERTS.c.next_attempt_at <= now),
                    or_(_ALERTS.c.claimed_until.is_(None), _ALERTS.c.claimed_until < now))
                .order_by(_ALERTS.c.id).limit(MAX_PER_PASS)).scalars())

    def _claim(self, alert_id: int, config: AlertConfig, now: datetime) -> bool:
        with self._core.transaction() as session:
            return session.connection().execute(update(_ALERTS).where(
                _ALERTS.c.id == alert_id, _ALERTS.c.delivered_at.is_(None),
                or_(_ALERTS.c.claimed_until.is_(None), _ALERTS.c.claimed_until < now))
                .values(claimed_until=now + config.delivery.lease, claimed_by=self.name)
            ).rowcount == 1

    def _deliver(self, alert_id: int, config: AlertConfig, now: datetime,
                 result: Delivered) -> None:
        with self._core.transaction() as session:
            row = session.get(Alert, alert_id)
            vault_id = self._core.vault_id(session)
        if row is None:
            return
        done = set(filter(None, row.delivered_to.split("\n")))
        message = message_of(row, vault_id)
        errors = []
        for spec in config.notifiers:
            if spec.name in done:
                continue
            try:
                self._send(spec, message)
            except Exception as exc:  # any notifier failure: kept, retried, never lost
                errors.append(f"{spec.name}: {notify.failure(exc)}")
                continue
            done.add(spec.name)
            self._note(alert_id, done)
        finished = all(spec.name in done for spec in config.notifiers)
        attempts = row.attempts + (0 if finished else 1)
        with self._core.transaction() as session:
            session.execute(update(_ALERTS).where(and_(_ALERTS.c.id == alert_id,
                                                       _ALERTS.c.claimed_by == self.name))
                            .values(claimed_until=None, claimed_by=None, attempts=attempts,
                                    delivered_at=now if finished else None,
                                    next_attempt_at=None if finished
                                    else now + backoff(config, attempts),
                                    last_error=None if finished else "; ".join(errors)[:2000]))
        if finished:
            result.sent += 1
        else:
            result.failed += 1
            result.errors += [f"alert {alert_id}: {e}" for e in errors]
            log.warning("mlsecrets: alert %d could not be sent (attempt %d; retried in %s): "
                        "%s", alert_id, attempts, backoff(config, attempts), "; ".join(errors))

    def _note(self, alert_id: int, done: set[str]) -> None:
        with self._core.transaction() as session:
            session.execute(update(_ALERTS).where(_ALERTS.c.id == alert_id)
                            .values(delivered_to="\n".join(sorted(done))))
