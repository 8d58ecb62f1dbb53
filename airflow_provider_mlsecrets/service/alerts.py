"""Alerts as the vault offers them (docs/alerts.md): a pass that evaluates the rules over
the audit trail and delivers what they raised, and the audited operations on alerts
(``alert.evaluate``, ``alert.list``, ``insight.alerts``, ``alert.ack``, ``alert.test``).

A pass (:meth:`AlertService.run_pass`) is the vault process's own work, like moving the
HSM's marks: it writes no audit record (the trail stays the evidence; the alerts are
derived from it). The operations that people and the maintenance DAG call are audited and
need ``audit``. Nothing here runs on a lookup's path: the vault process's background
thread (alerts/runner.py) or a caller runs passes.
"""

from __future__ import annotations

import builtins
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from airflow_provider_mlsecrets.alerts import config as alert_config
from airflow_provider_mlsecrets.alerts.deliver import Delivered, Sender, message_of
from airflow_provider_mlsecrets.alerts.evaluate import Evaluated, Evaluator
from airflow_provider_mlsecrets.alerts.message import Message
from airflow_provider_mlsecrets.audit.record import format_ts
from airflow_provider_mlsecrets.errors import AccessDenied, InvalidInput, NotFound
from airflow_provider_mlsecrets.policy.roles import Capability
from airflow_provider_mlsecrets.service._core import Caller, Core, utcnow
from airflow_provider_mlsecrets.store.models import Alert

MAX_LIST = 1000


@dataclass(frozen=True)
class AlertView:
    id: int
    rule: str
    severity: str
    summary: str
    event_ts: str
    raised_at: str
    principal: str
    path: str
    chain: int | None
    seq: int | None
    request_id: str | None
    details: dict[str, Any]
    delivered_at: str | None
    delivered_to: list[str]
    attempts: int
    last_error: str | None
    acked_at: str | None
    acked_by: str | None


@dataclass(frozen=True)
class PassResult:
    records: int
    raised: int
    sent: int
    failed: int
    pending: int
    errors: list[str] = field(default_factory=list)


def view(a: Alert) -> AlertView:
    details = message_of(a, "").details
    return AlertView(
        id=a.id, rule=a.rule, severity=a.severity, summary=a.summary, event_ts=a.event_ts,
        raised_at=format_ts(a.raised_at), principal=a.principal, path=a.path, chain=a.chain,
        seq=a.seq, request_id=a.request_id, details=dict(details),
        delivered_at=format_ts(a.delivered_at) if a.delivered_at else None,
        delivered_to=[n for n in a.delivered_to.split("\n") if n], attempts=a.attempts,
        last_error=a.last_error, acked_at=format_ts(a.acked_at) if a.acked_at else None,
        acked_by=a.acked_by)


class AlertService:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._config: alert_config.AlertConfig | None = None
        self._evaluator = Evaluator(core)
        self._sender = Sender(core)
        self._pass = threading.Lock()  # one pass at a time in this process

    @property
    def config(self) -> alert_config.AlertConfig:
        """The rules and notifiers (``MLSECRETS_ALERT_RULES``), read and checked once;
        every notifier's class is imported and checked here, so a wrong one fails the
        first pass with its name instead of each alert's delivery."""
        if self._config is None:
            loaded = alert_config.load(self._core.settings.alert_rules)
            if loaded.notifiers:
                from airflow_provider_mlsecrets.alerts.notify import notifier_class

                for spec in loaded.notifiers:
                    notifier_class(spec)
            self._config = loaded
        return self._config

    # -- the vault's own work ------------------------------------------------------------
    def run_pass(self, *, now: datetime | None = None, conditions: bool = True) -> PassResult:
        """Evaluate what was written since the last pass (and, with ``conditions``, the
        time-based rules), then deliver what is due."""
        config = self.config
        with self._pass:
            moment = now or utcnow()
            evaluated: Evaluated = self._evaluator.run(config, moment, conditions=conditions)
            delivered: Delivered = self._sender.run(config, moment)
        return PassResult(records=evaluated.records, raised=evaluated.raised,
                          sent=delivered.sent, failed=delivered.failed,
                          pending=delivered.pending, errors=delivered.errors)

    # -- operations ----------------------------------------------------------------------
    def run(self, caller: Caller) -> PassResult:
        """One pass, asked for by the maintenance DAG or ``mlsecrets alerts run``."""
        with self._core.operation(caller, "alert.evaluate", Capability.AUDIT):
            pass  # authorised and recorded first; the pass takes transactions of its own
        return self.run_pass()

    def list(self, caller: Caller, *, open_only: bool = False, limit: int = 100
             ) -> builtins.list[AlertView]:
        """Alerts, newest first (``open_only``: not yet acknowledged)."""
        return self._list(caller, "alert.list", open_only, limit)

    def open(self, caller: Caller, *, limit: int = 100) -> builtins.list[AlertView]:
        """The open alerts, for the console."""
        return self._list(caller, "insight.alerts", True, limit)

    def _list(self, caller: Caller, action: str, open_only: bool, limit: int
              ) -> builtins.list[AlertView]:
        if not 1 <= limit <= MAX_LIST:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIST}")
        with self._core.operation(caller, action, Capability.AUDIT) as op:
            query = select(Alert).order_by(Alert.id.desc()).limit(limit)
            if open_only:
                query = query.where(Alert.acked_at.is_(None))
            return [view(a) for a in op.session.scalars(query)]

    def ack(self, caller: Caller, alert_id: int) -> AlertView:
        """Acknowledge an alert (it leaves the open list; its delivery is unaffected). Not
        one about the caller's own action: a security engineer who read a secret cannot
        close the alert that says so."""
        with self._core.operation(caller, "alert.ack", Capability.AUDIT) as op:
            row = op.session.get(Alert, alert_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no alert {alert_id}")
            op.reason += f"; alert {alert_id} ({row.rule}, key {row.key})"
            if row.principal == op.actor.name:  # nobody closes the alert about themselves
                raise AccessDenied(f"alert {alert_id} is about {row.principal}'s own action: "
                                   "someone else acknowledges it")
            if row.acked_at is None:
                op.session.execute(update(Alert).where(Alert.id == alert_id).values(
                    acked_at=utcnow(), acked_by=op.actor.name))
            else:
                op.reason += f", already acknowledged by {row.acked_by}"
            op.session.flush()
            op.session.refresh(row)
            return view(row)

    def test(self, caller: Caller) -> dict[str, str]:
        """Send a test alert through every notifier; each one's result ("sent" or why it
        failed). Nothing is stored: a test alert is not an alert."""
        from airflow_provider_mlsecrets.alerts import notify

        config = self.config
        with self._core.operation(caller, "alert.test", Capability.AUDIT) as op:
            op.reason += f"; {len(config.notifiers)} notifier(s)"
            who, vault_id = op.actor.name, self._core.vault_id(op.session)
        now = format_ts(utcnow())
        message = Message(alert_id=None, rule="test", severity="low",
                          summary="a test alert: the notifier works", event_ts=now,
                          raised_at=now, principal=who, vault_id=vault_id,
                          details={"sent_by": who})
        out: dict[str, str] = {}
        for spec in config.notifiers:
            try:
                notify.send(spec, message)
                out[spec.name] = "sent"
            except Exception as exc:  # reported per notifier, as the command's answer
                out[spec.name] = f"failed: {notify.failure(exc)}"
        return out
