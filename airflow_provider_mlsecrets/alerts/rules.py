"""The rules: what in the audit trail (or in the vault's state) raises an alert.

Record rules read one audit record at a time, in each chain's order, and may look back in
the trail (a burst of denials); condition rules look at the vault as it is now (the last
verification, the HSM's marks, a key rotation's re-wrap). Each :class:`Finding` carries the
unique key that makes it one alert however many evaluators see it: the rule with the
record's chain and seq, a burst's subject with its window, or a condition with its day.

Nothing here renders anything: record fields are data, copied into the finding as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, func, select

from airflow_provider_mlsecrets.alerts.config import AlertConfig
from airflow_provider_mlsecrets.audit.record import Outcome, format_ts
from airflow_provider_mlsecrets.paths import matches
from airflow_provider_mlsecrets.store.models import AuditRecord, Kek, KeyState, SecretVersion

DELIVERING = ("secret.inject", "secret.unseal")  # a value delivered to a pipeline
MAX_DETAIL = 300
_AUDIT = AuditRecord.__table__


@dataclass(frozen=True)
class Finding:
    key: str
    rule: str
    severity: str
    event_ts: str
    summary: str
    principal: str = ""
    path: str = ""
    chain: int | None = None
    seq: int | None = None
    request_id: str | None = None
    details: dict[str, str | int | None] = field(default_factory=dict)


def context_of(record: Any) -> dict[str, Any]:
    try:
        found = json.loads(record.context or "{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def short(value: Any) -> str | None:
    """A field for an alert: text, bounded, with no control characters (no header or log
    line can be split by a record's content)."""
    if value is None:
        return None
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    return text[:MAX_DETAIL]


def dag_of(record: Any, context: dict[str, Any]) -> str | None:
    dag = context.get("dag_id")
    if isinstance(dag, str) and dag:
        return dag
    return record.principal[4:] if record.principal.startswith("dag:") else None


class RecordRules:
    """The record rules of one evaluation pass. ``is_new(dag, path, ts)`` records that a DAG
    received a path and says whether that is the first time (the seen-history table)."""

    def __init__(self, config: AlertConfig, connection: Connection,
                 is_new: Callable[[str, str, str], bool]) -> None:
        self._config = config
        self._c = connection
        self._is_new = is_new

    def findings(self, record: Any) -> Iterable[Finding]:
        context = context_of(record)
        for check in (self._human_read, self._new_dag_secret, self._rotation_failed,
                      self._audit_failed):
            found = check(record, context)
            if found is not None:
                yield found
        yield from self._denial_burst(record, context)

    def _base(self, rule: str, record: Any, summary: str, **details: Any) -> Finding:
        config = self._config.rules[rule]
        return Finding(key=f"{rule}:{record.chain}:{record.seq}", rule=rule,
                       severity=config.severity, event_ts=record.ts, summary=summary,
                       principal=record.principal, path=record.path, chain=record.chain,
                       seq=record.seq, request_id=record.request_id,
                       details={k: short(v) for k, v in details.items() if v is not None})

    def _human_read(self, record: Any, context: dict[str, Any]) -> Finding | None:
        rule = self._config.rule("human_read")
        if (rule is None or record.action != "secret.read"
                or record.outcome != Outcome.ALLOWED.value):
            return None
        critical = "approval" in context
        if rule.only_critical and not critical:
            return None
        if not any(matches(p, record.path) for p in rule.paths):
            return None
        return self._base("human_read", record, "a person read a secret's plaintext",
                          version=record.version, justification=context.get("justification"),
                          approval=context.get("approval"), client=context.get("client"),
                          component=context.get("component"),
                          critical="yes" if critical else None)

    def _new_dag_secret(self, record: Any, context: dict[str, Any]) -> Finding | None:
        if (self._config.rule("new_dag_secret") is None or record.action not in DELIVERING
                or record.outcome != Outcome.ALLOWED.value or not record.path):
            return None
        dag = dag_of(record, context)
        if dag is None or not self._is_new(dag, record.path, record.ts):
            return None
        return self._base("new_dag_secret", record,
                          "a DAG received a secret it had never used before", dag_id=dag,
                          task_id=context.get("task_id"), run_id=context.get("run_id"))

    def _rotation_failed(self, record: Any, context: dict[str, Any]) -> Finding | None:
        if self._config.rule("rotation_failed") is None or record.action != "rotation.fail":
            return None
        return self._base("rotation_failed", record, "a secret's rotation failed",
                          why=record.reason)

    def _audit_failed(self, record: Any, context: dict[str, Any]) -> Finding | None:
        if self._config.rule("audit_failed") is None or record.action != "audit.verify":
            return None
        if record.outcome != Outcome.ERROR.value and "; FAILED" not in record.reason:
            return None
        return self._base("audit_failed", record, "the audit trail failed verification",
                          why=record.reason)

    def _denial_burst(self, record: Any, context: dict[str, Any]) -> Iterable[Finding]:
        rule = self._config.rule("denial_burst")
        if rule is None or record.outcome != Outcome.DENIED.value:
            return
        ts = parse_ts(record.ts)
        if ts is None:
            return
        since = format_ts(ts - rule.window)
        window_s = max(rule.window.total_seconds(), 1.0)
        bucket = int(ts.timestamp() // window_s)
        for by in rule.by:
            subject = record.principal if by == "principal" else context.get("client")
            if not isinstance(subject, str) or not subject:
                continue
            query = select(func.count()).select_from(_AUDIT).where(
                _AUDIT.c.outcome == Outcome.DENIED.value, _AUDIT.c.ts > since,
                _AUDIT.c.ts <= record.ts)
            if by == "principal":
                query = query.where(_AUDIT.c.principal == subject)
            else:
                query = query.where(_AUDIT.c.context.like(
                    "%" + _like(json.dumps({"client": subject}, separators=(",", ":"),
                                     ensure_ascii=False)[1:-1]) + "%", escape="\\"))
            count = int(self._c.execute(query).scalar_one())
            if count < rule.count:
                continue
            digest = hashlib.sha256(subject.encode()).hexdigest()[:32]
            yield Finding(
                key=f"denial_burst:{by}:{digest}:{bucket}", rule="denial_burst",
                severity=rule.severity, event_ts=record.ts,
                summary=f"{count} denials by one {by} within {_span(rule.window)}",
                principal=record.principal if by == "principal" else "",
                path=record.path, chain=record.chain, seq=record.seq,
                request_id=record.request_id,
                details={"by": by, "subject": short(subject), "denials": count,
                         "window": _span(rule.window), "last_action": short(record.action)})


# -- conditions -------------------------------------------------------------------------
def audit_overdue(config: AlertConfig, c: Connection, vault_created: datetime,
                  now: datetime) -> Finding | None:
    """No passing ``audit.verify`` for longer than the rule's ``after``."""
    rule = config.rule("audit_overdue")
    if rule is None:
        return None
    last = None
    for row in c.execute(select(_AUDIT.c.chain, _AUDIT.c.seq, _AUDIT.c.ts, _AUDIT.c.outcome,
                                _AUDIT.c.reason, _AUDIT.c.request_id)
                         .where(_AUDIT.c.action == "audit.verify", _AUDIT.c.path == "")
                         .order_by(_AUDIT.c.ts.desc()).limit(200)):
        if row.outcome == Outcome.ALLOWED.value and "; ok," in row.reason:
            last = row
            break
    since = parse_ts(last.ts) if last is not None else vault_created
    if since is None or now - since <= rule.after:
        return None
    return Finding(
        key=f"audit_overdue:{now.date().isoformat()}", rule="audit_overdue",
        severity=rule.severity, event_ts=format_ts(now),
        summary=f"no passing audit verification for over {_span(rule.after)}",
        chain=last.chain if last else None, seq=last.seq if last else None,
        request_id=last.request_id if last else None,
        details={"last_passing": last.ts if last else None, "overdue_after": _span(rule.after)})


def unmarked_since(c: Connection, chain: int, mark_seq: int) -> str | None:
    """When the oldest record of ``chain`` beyond its HSM mark was written."""
    return c.execute(select(_AUDIT.c.ts).where(_AUDIT.c.chain == chain,
                                               _AUDIT.c.seq > mark_seq)
                     .order_by(_AUDIT.c.seq).limit(1)).scalar_one_or_none()


def mark_stale(config: AlertConfig, chain: int, oldest_unmarked: str, mark_at: str | None,
               why: str, now: datetime) -> Finding | None:
    rule = config.rule("mark_stale")
    if rule is None:
        return None
    return Finding(
        key=f"mark_stale:{chain}:{now.date().isoformat()}", rule="mark_stale",
        severity=rule.severity, event_ts=format_ts(now),
        summary=f"audit chain {chain} has records the HSM's high-water mark has not covered "
                f"for over {_span(rule.after)}",
        chain=chain, details={"oldest_unmarked": oldest_unmarked, "mark_at": mark_at,
                              "why": short(why)})


def rewrap_pending(config: AlertConfig, c: Connection, now: datetime) -> Finding | None:
    """Data keys still under a retired KEK longer than ``after`` after the current KEK was
    made (a key rotation left half done)."""
    rule = config.rule("rewrap_pending")
    if rule is None:
        return None
    current = c.execute(select(Kek.label, Kek.created_at).where(
        Kek.state == KeyState.CURRENT.value)).one_or_none()
    if current is None or now - current.created_at <= rule.after:
        return None
    pending = int(c.execute(select(func.count()).select_from(SecretVersion).join(
        Kek, Kek.label == SecretVersion.kek_id).where(
        SecretVersion.wrapped_key.is_not(None), Kek.state == KeyState.RETIRED.value)
    ).scalar_one())
    if pending == 0:
        return None
    return Finding(
        key=f"rewrap_pending:{current.label}:{now.date().isoformat()}", rule="rewrap_pending",
        severity=rule.severity, event_ts=format_ts(now),
        summary=f"a key rotation is half done: {pending} data key(s) still under a retired "
                f"key, {_span(rule.after)} after {current.label} became current",
        details={"current_key": current.label, "since": format_ts(current.created_at),
                 "pending": pending})


def integrity_finding(config: AlertConfig, chain: int, why: str, now: datetime
                      ) -> Finding | None:
    """The trail failed a check the evaluator made itself (moving a mark)."""
    rule = config.rule("audit_failed")
    if rule is None:
        return None
    return Finding(key=f"audit_failed:mark:{chain}:{now.date().isoformat()}",
                   rule="audit_failed", severity=rule.severity, event_ts=format_ts(now),
                   summary=f"audit chain {chain} failed its check against the HSM's mark",
                   chain=chain, details={"why": short(why)})


def parse_ts(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
