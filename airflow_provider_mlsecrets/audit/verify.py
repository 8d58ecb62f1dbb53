"""Verification of the audit trail.

The hash chain is recomputed in software (a million records cost a million SHA-256
calls); seals are checked in the HSM: the newest record's always, every record's on
request or as soon as the newest fails, which is what names the first bad record when an
attacker with database access recomputed the hashes after changing one. Checkpoints prove
the tail was not truncated.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, func, select

from airflow_provider_mlsecrets.audit.checkpoint import ChainPoint, Checkpoint
from airflow_provider_mlsecrets.audit.record import Entry, genesis, next_hash
from airflow_provider_mlsecrets.keys import KeyProvider, MacKey
from airflow_provider_mlsecrets.store.models import AuditHead, AuditRecord

Progress = Callable[[int], None]
PROGRESS_STEP = 1000
_COLUMNS = (AuditRecord.seq, AuditRecord.ts, AuditRecord.principal, AuditRecord.roles,
            AuditRecord.action, AuditRecord.path, AuditRecord.version, AuditRecord.outcome,
            AuditRecord.reason, AuditRecord.request_id, AuditRecord.context, AuditRecord.hash,
            AuditRecord.seal)


@dataclass
class Report:
    """The result: ``ok``, how much was checked and, if not ok, the first bad record."""

    records: int = 0
    seals_checked: int = 0
    chains: int = 0
    problems: list[str] = field(default_factory=list)
    first_bad: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, chain: int, seq: int | None, problem: str) -> None:
        self.problems.append(problem)
        if self.first_bad is None and seq is not None:
            self.first_bad = (chain, seq)


def count(connection: Connection) -> int:
    return int(connection.execute(select(func.count()).select_from(AuditRecord)).scalar_one())


def verify(connection: Connection, keys: KeyProvider, vault_id: str, *,
           checkpoint: Checkpoint | None = None, all_seals: bool = False,
           progress: Progress | None = None) -> Report:
    report = Report()
    # FOR UPDATE: no record is appended while the trail is read, so the heads and the
    # records are one consistent picture (SQLite's write lock already gives that). Exclusive,
    # not shared: the verification appends its own record afterwards, and two shared
    # holders both waiting to upgrade would deadlock.
    heads = {h.chain: h for h in connection.execute(
        select(AuditHead).with_for_update()).all()}
    if not heads:
        report.fail(0, None, "there is no audit chain at all: the trail was removed, or the "
                    "vault was never initialised")
    if checkpoint is not None and checkpoint.vault_id != vault_id:
        report.fail(0, None, f"the checkpoint is for vault {checkpoint.vault_id}, not {vault_id}")
    _check_extents(connection, heads, report)
    wanted = {p.chain: p.seq for p in checkpoint.chains} if checkpoint is not None else {}
    walked: dict[int, bytes] = {}
    for chain, head in sorted(heads.items()):
        report.chains += 1
        _verify_chain(connection, keys, vault_id, chain, head, report, all_seals, progress,
                      wanted.get(chain), walked)
    if checkpoint is not None:
        for point in checkpoint.chains:
            _check_point(keys, point, heads.get(point.chain), walked.get(point.chain), report)
    return report


def _check_extents(connection: Connection, heads: dict[int, Row[Any]], report: Report) -> None:
    """Every record must lie on a chain with a head and at or below it: a record planted
    beyond the head, or on a chain with no head, would otherwise never be walked."""
    for chain, top in connection.execute(
            select(AuditRecord.chain, func.max(AuditRecord.seq)).group_by(AuditRecord.chain)):
        head = heads.get(chain)
        if head is None:
            report.fail(chain, 1, f"chain {chain} has records but no head: records were "
                        "inserted outside the vault")
        elif top > head.seq:
            report.fail(chain, head.seq + 1, f"chain {chain} has records beyond its head "
                        f"(up to {top}, head at {head.seq}): records were inserted, or the "
                        "head was moved back")


def _rows(connection: Connection, chain: int, upto: int) -> Iterable[Row[Any]]:
    """The chain's records up to its head as read: records committed after the head was
    read belong to the next verification, not to a false alarm in this one."""
    # Per-statement options: Connection.execution_options() would change the connection
    # itself, and every later statement on it would become a server-side cursor.
    return connection.execute(
        select(*_COLUMNS).where(AuditRecord.chain == chain, AuditRecord.seq <= upto)
        .order_by(AuditRecord.seq).execution_options(yield_per=5000))


def _verify_chain(connection: Connection, keys: KeyProvider, vault_id: str, chain: int,
                  head: Row[Any], report: Report, all_seals: bool,
                  progress: Progress | None, checkpoint_seq: int | None,
                  walked: dict[int, bytes]) -> None:
    previous = genesis(vault_id, chain)
    expected = 1
    last = None
    for r in _rows(connection, chain, head.seq):
        seq = r.seq
        if seq != expected:
            report.fail(chain, expected, f"chain {chain}: record {expected} is missing "
                        f"(the next record is {seq}): records were deleted or inserted")
            return
        entry = Entry(ts=r.ts, principal=r.principal, roles=r.roles, action=r.action,
                      path=r.path, version=r.version, outcome=r.outcome, reason=r.reason,
                      request_id=r.request_id, context=r.context)
        digest = next_hash(previous, chain, seq, entry)
        if not hmac.compare_digest(digest, r.hash):
            report.fail(chain, seq, f"chain {chain}: record {seq} does not match the chain: "
                        "it, or the one before it, was changed, inserted or reordered")
            return
        if all_seals and not _seal_ok(keys, digest, r.seal):
            report.fail(chain, seq, f"chain {chain}: record {seq} has a bad seal: "
                        "the trail was rewritten from here on")
            return
        report.seals_checked += all_seals
        report.records += 1
        if seq == checkpoint_seq:
            walked[chain] = digest  # the hash as recomputed, not as stored
        previous, expected, last = digest, expected + 1, r
        if progress is not None and report.records % PROGRESS_STEP == 0:
            progress(PROGRESS_STEP)
    if last is not None and not all_seals:
        report.seals_checked += 1
        if not _seal_ok(keys, previous, last.seal):
            # Someone recomputed the hashes: find the first record whose seal fails.
            for row in _rows(connection, chain, head.seq):
                if not _seal_ok(keys, row.hash, row.seal):
                    report.fail(chain, row.seq, f"chain {chain}: record {row.seq} has a bad "
                                "seal: the trail was rewritten from here on")
                    return
    head_seq, head_hash = head.seq, head.hash
    if head_seq != expected - 1 or not hmac.compare_digest(head_hash, previous):
        report.fail(chain, min(head_seq, expected), f"chain {chain}: the chain head names "
                    f"record {head_seq} but the trail ends at {expected - 1}: records were "
                    "deleted from the end or the head was altered")


def _seal_ok(keys: KeyProvider, digest: bytes, seal: bytes | None) -> bool:
    return seal is not None and hmac.compare_digest(keys.mac(MacKey.AUDIT, digest), seal)


def _check_point(keys: KeyProvider, point: ChainPoint, head: Row[Any] | None,
                 recomputed: bytes | None, report: Report) -> None:
    chain, seq = point.chain, point.seq
    if not _seal_ok(keys, point.hash, point.seal):
        report.fail(chain, None, f"checkpoint for chain {chain} at record {seq} has a bad seal: "
                    "it was not made by this vault's HSM")
    elif head is None or seq > head.seq or recomputed is None:
        report.fail(chain, seq, f"chain {chain}: the checkpoint names record {seq}, which the "
                    "verified trail does not reach: the trail was truncated")
    elif not hmac.compare_digest(recomputed, point.hash):
        report.fail(chain, seq, f"chain {chain}: record {seq} differs from the checkpoint")
