"""The audit trail as auditors use it: tail, export, verify, checkpoint.

Reading the trail is itself an audited action (``audit`` capability)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select

from airflow_provider_mlsecrets.audit import verify as verification
from airflow_provider_mlsecrets.audit.checkpoint import ChainPoint, Checkpoint
from airflow_provider_mlsecrets.audit.record import Outcome, format_ts
from airflow_provider_mlsecrets.errors import AuditChainBroken, InvalidInput
from airflow_provider_mlsecrets.policy.roles import Capability
from airflow_provider_mlsecrets.service._core import Caller, Core, utcnow
from airflow_provider_mlsecrets.store.models import AuditHead, AuditRecord


@dataclass(frozen=True)
class AuditFilter:
    """Forensic filters; every one is optional and they combine with AND."""

    principal: str | None = None
    path_prefix: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in {o.value for o in Outcome}:
            raise InvalidInput(f"unknown outcome {self.outcome!r}; outcomes are "
                               f"{', '.join(o.value for o in Outcome)}")

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.principal is not None:
            query = query.where(AuditRecord.principal == self.principal)
        if self.path_prefix:
            query = query.where(AuditRecord.path.startswith(self.path_prefix, autoescape=True))
        if self.action is not None:
            query = query.where(AuditRecord.action == self.action)
        if self.outcome is not None:
            query = query.where(AuditRecord.outcome == self.outcome)
        if self.since is not None:
            query = query.where(AuditRecord.ts >= format_ts(self.since))
        if self.until is not None:
            query = query.where(AuditRecord.ts < format_ts(self.until))
        return query


@dataclass(frozen=True)
class AuditView:
    chain: int
    seq: int
    ts: str
    principal: str
    roles: str
    action: str
    path: str
    version: int | None
    outcome: str
    reason: str
    request_id: str
    context: dict[str, Any] = field(default_factory=dict)
    hash: str = ""
    sealed: bool = False

    @property
    def caller(self) -> str:
        """Who asked, in a few words: the task for a task, else the component."""
        c = self.context
        if c.get("dag_id"):
            return f"{c['dag_id']}.{c.get('task_id')} try {c.get('try_number')}"
        return str(c.get("component", ""))


def _view(r: AuditRecord) -> AuditView:
    try:
        context = json.loads(r.context)
    except ValueError:
        context = {"unparseable": True}
    return AuditView(chain=r.chain, seq=r.seq, ts=r.ts, principal=r.principal, roles=r.roles,
                     action=r.action, path=r.path, version=r.version, outcome=r.outcome,
                     reason=r.reason, request_id=r.request_id, context=context,
                     hash=r.hash.hex(), sealed=r.seal is not None)


class AuditService:
    def __init__(self, core: Core) -> None:
        self._core = core

    def tail(self, caller: Caller, n: int = 20,
             filters: AuditFilter | None = None) -> list[AuditView]:
        """The newest ``n`` matching records, oldest first."""
        if n < 1:
            raise InvalidInput("-n takes a positive number")
        query = (filters or AuditFilter()).apply(select(AuditRecord)).order_by(
            AuditRecord.ts.desc(), AuditRecord.chain.desc(), AuditRecord.seq.desc()).limit(n)
        with self._core.operation(caller, "audit.tail", Capability.AUDIT) as op:
            return [_view(r) for r in reversed(op.session.scalars(query).all())]

    def export(self, caller: Caller, filters: AuditFilter | None = None) -> Iterator[AuditView]:
        """Every matching record, oldest first (read in one transaction, then streamed)."""
        query = (filters or AuditFilter()).apply(select(AuditRecord)).order_by(
            AuditRecord.chain, AuditRecord.seq)
        with self._core.operation(caller, "audit.export", Capability.AUDIT) as op:
            rows = [_view(r) for r in op.session.scalars(query)]
            op.reason += f"; {len(rows)} records"
        return iter(rows)

    def count(self, caller: Caller) -> int:
        with self._core.operation(caller, "audit.count", Capability.AUDIT) as op:
            return verification.count(op.session.connection())

    def verify(self, caller: Caller, *, checkpoint: Checkpoint | None = None,
               all_seals: bool = False,
               progress: verification.Progress | None = None) -> verification.Report:
        """Check the whole trail; raise :class:`AuditChainBroken` naming the first bad record.

        The verification itself is recorded, with its result, after it ran."""
        with self._core.operation(caller, "audit.verify", Capability.AUDIT) as op:
            report = verification.verify(op.session.connection(), self._core.keys,
                                         self._core.vault_id(op.session), checkpoint=checkpoint,
                                         all_seals=all_seals, progress=progress)
            op.reason += (f"; ok, {report.records} records" if report.ok
                          else f"; FAILED: {report.problems[0]}")
        if not report.ok:
            chain, seq = report.first_bad or (0, None)
            raise AuditChainBroken("; ".join(report.problems), chain=chain, seq=seq)
        return report

    def checkpoint(self, caller: Caller) -> Checkpoint:
        """Verify, then capture every chain's newest sealed record."""
        self.verify(caller)
        with self._core.operation(caller, "audit.checkpoint", Capability.AUDIT) as op:
            points = []
            for head in op.session.scalars(select(AuditHead).order_by(AuditHead.chain)):
                row = op.session.get(AuditRecord, (head.chain, head.seq))
                if row is None or row.seal is None:
                    continue
                points.append(ChainPoint(chain=row.chain, seq=row.seq, hash=row.hash,
                                         seal=row.seal))
            op.reason += "; " + ", ".join(f"chain {p.chain} at {p.seq}" for p in points)
            return Checkpoint(vault_id=self._core.vault_id(op.session),
                              created_at=format_ts(utcnow()), chains=tuple(points))
