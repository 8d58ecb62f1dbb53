"""The audit trail as auditors use it: tail, export, verify, checkpoint; and retention.

Reading the trail is itself an audited action (``audit`` capability). Pruning it needs what
``grant`` needs (an unfenced security engineer)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from sqlalchemy import Select, delete, func, insert, select
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets import metrics
from airflow_provider_mlsecrets.audit import anchor
from airflow_provider_mlsecrets.audit import verify as verification
from airflow_provider_mlsecrets.audit.checkpoint import ChainPoint, Checkpoint
from airflow_provider_mlsecrets.audit.export import EXPORT_FORMAT, ExportReport, check_export
from airflow_provider_mlsecrets.audit.record import Outcome, format_ts, genesis
from airflow_provider_mlsecrets.errors import AuditChainBroken, InvalidInput
from airflow_provider_mlsecrets.policy.roles import Capability
from airflow_provider_mlsecrets.service._core import Caller, Core, utcnow
from airflow_provider_mlsecrets.store.models import AuditAnchor, AuditHead, AuditRecord


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


def _measure_verification(session: Session, ok: bool) -> None:
    """``mlsecrets.audit.verification`` by result, and the verification lag: 0 after a
    pass, else the time since the last pass (none yet: not emitted)."""
    metrics.count("mlsecrets.audit.verification", {"outcome": "passed" if ok else "failed"})
    if ok:
        metrics.gauge("mlsecrets.audit.verification.lag", 0.0)
        return
    last = session.scalars(select(AuditRecord.ts).where(
        AuditRecord.action == "audit.verify", AuditRecord.outcome == Outcome.ALLOWED.value,
        AuditRecord.reason.contains("; ok,")).order_by(AuditRecord.ts.desc()).limit(1)).first()
    if last is not None:
        passed = datetime.fromisoformat(last.replace("Z", "+00:00"))
        metrics.gauge("mlsecrets.audit.verification.lag",
                      (utcnow() - passed).total_seconds())


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
        """Check the whole trail, against the HSM's high-water marks too; raise
        :class:`AuditChainBroken` naming the first bad record. A trail that passes moves
        the marks to where it was verified.

        The verification itself is recorded, with its result, after it ran; if even that
        record cannot be written (a tampered head refuses it), what was found is still
        what the caller is told."""
        found: list[verification.Report] = []
        try:
            with self._core.operation(caller, "audit.verify", Capability.AUDIT) as op:
                vault_id = self._core.vault_id(op.session)
                report = verification.verify(op.session.connection(), self._core.keys,
                                             vault_id, checkpoint=checkpoint,
                                             all_seals=all_seals, progress=progress)
                found.append(report)
                if report.ok:
                    verification.advance_marks(self._core.keys, vault_id, report,
                                               format_ts(utcnow()))
                if metrics.enabled():
                    _measure_verification(op.session, report.ok)
                op.reason += (f"; ok, {report.records} records" if report.ok
                              else f"; FAILED: {report.problems[0]}")
        except AuditChainBroken:
            if not found or found[0].ok:
                raise
        report = found[0]
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

    def verify_export(self, caller: Caller, lines: Iterable[str], *,
                      checkpoint: Checkpoint | None = None) -> ExportReport:
        """Check a file written by :meth:`prune` on its own (``audit``), and the records of
        ``checkpoint`` that it holds."""
        with self._core.operation(caller, "audit.verify_export", Capability.AUDIT) as op:
            report = check_export(lines, self._core.keys, self._core.vault_id(op.session),
                                  checkpoint=checkpoint)
            op.reason += (f"; ok, {report.records} records" if report.ok
                          else f"; FAILED: {report.problems[0]}")
        return report

    def prune(self, caller: Caller, before: datetime, out: TextIO) -> PruneInfo:
        """Move every record older than ``before`` out of the database into ``out``.

        The trail is verified first. Each chain is cut after its longest run of records
        older than ``before`` (never a newer one); the exported records, the hash each
        chain's run starts from and a checkpoint of where it ends make the export
        verifiable on its own. The cut record's hash and seal become the chain's anchor,
        which verification starts from, and this operation's audit record names every
        anchor. Nothing reaches ``out`` before that record is committed."""
        retention = self._core.settings.min_audit_retention()
        if before > utcnow() - retention:
            raise InvalidInput(
                f"refusing to prune records younger than MLSECRETS_AUDIT_MIN_RETENTION "
                f"({self._core.settings.audit_min_retention}): give --before no later than "
                f"{format_ts(utcnow() - retention)}")
        cutoff = format_ts(before)
        with tempfile.TemporaryFile("w+", encoding="utf-8") as buffer:
            with self._core.operation(caller, "audit.prune", Capability.GRANT) as op:
                c = op.session.connection()
                vault_id = self._core.vault_id(op.session)
                report = verification.verify(c, self._core.keys, vault_id)
                if not report.ok:
                    chain, seq = report.first_bad or (0, None)
                    raise AuditChainBroken("; ".join(report.problems) + "; nothing was pruned",
                                           chain=chain, seq=seq)
                info = self._cut(c, vault_id, cutoff, buffer, op.request_id)
                notes = [anchor.note(chain, seq, digest)
                         for chain, (seq, digest) in sorted(info.anchors.items())]
                op.reason += (f"; pruned {sum(info.pruned.values())} records before {cutoff}; "
                              "anchors: " + (", ".join(notes) or "none"))
            buffer.seek(0)
            shutil.copyfileobj(buffer, out)
        return info

    def _cut(self, c: Any, vault_id: str, cutoff: str, out: TextIO,
             prune_request: str) -> PruneInfo:
        now = format_ts(utcnow())
        anchors: dict[int, tuple[int, bytes]] = {}
        start_seals: dict[int, dict[str, str]] = {}
        for row in c.execute(select(AuditAnchor).order_by(AuditAnchor.seq)):
            anchors[row.chain] = (row.seq, row.hash)
            start_seals[row.chain] = {"seal": row.seal.hex(),
                                      "prune_request": row.prune_request or ""}
        heads = {h.chain: h for h in c.execute(select(AuditHead))}
        # where each chain's exportable run starts: after its (sealed) anchor, or from
        # genesis; the export carries the anchor's seal so that it verifies on its own
        starts = {chain: anchors.get(chain, (0, genesis(vault_id, chain)))
                  for chain in sorted(heads)}
        out.write(json.dumps({"format": EXPORT_FORMAT, "vault_id": vault_id, "before": cutoff,
                              "starts": {str(chain): {"after": after, "hash": digest.hex(),
                                                      **start_seals.get(chain, {})}
                                         for chain, (after, digest) in starts.items()}}) + "\n")
        pruned: dict[int, int] = {}
        points = []
        for chain, head in sorted(heads.items()):
            after = starts[chain][0]
            newer = c.execute(select(func.min(AuditRecord.seq)).where(
                AuditRecord.chain == chain, AuditRecord.seq > after,
                AuditRecord.ts >= cutoff)).scalar_one_or_none()
            cut = head.seq if newer is None else newer - 1
            if cut <= after:
                continue
            last = None
            for row in c.execute(select(AuditRecord).where(
                    AuditRecord.chain == chain, AuditRecord.seq > after,
                    AuditRecord.seq <= cut).order_by(AuditRecord.seq)):
                out.write(json.dumps({name: (value.hex() if isinstance(value, bytes) else value)
                                      for name, value in row._asdict().items()}) + "\n")
                last = row
            if last is None or last.seal is None:
                continue
            c.execute(insert(AuditAnchor).values(
                chain=chain, seq=cut, hash=last.hash, pruned_at=now, prune_request=prune_request,
                seal=anchor.seal(self._core.keys, vault_id, chain, cut, last.hash,
                                 prune_request)))
            c.execute(delete(AuditRecord).where(AuditRecord.chain == chain,
                                                AuditRecord.seq <= cut))
            anchors[chain] = (cut, last.hash)
            pruned[chain] = cut - after
            points.append(ChainPoint(chain=chain, seq=cut, hash=last.hash, seal=last.seal))
        checkpoint = Checkpoint(vault_id=vault_id, created_at=now, chains=tuple(points))
        out.write(json.dumps({"records": sum(pruned.values()),
                              "checkpoint": json.loads(checkpoint.to_json())}) + "\n")
        return PruneInfo(pruned=pruned, anchors=anchors)



@dataclass(frozen=True)
class PruneInfo:
    pruned: dict[int, int]  # chain -> records moved out
    anchors: dict[int, tuple[int, bytes]]  # chain -> (seq, hash) it now starts after

