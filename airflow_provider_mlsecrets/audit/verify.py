"""Verification of the audit trail.

The hash chain is recomputed in software (a million records cost a million SHA-256
calls); seals are checked in the HSM: the newest record's always, every record's on
request or as soon as the newest fails, which is what names the first bad record when an
attacker with database access recomputed the hashes after changing one. Because the vault
never seals over a head it has not checked (audit/log.py), the newest seal vouches for the
whole chain. A pruned chain starts from its anchor, sealed as an anchor and named by its
prune's own record. The HSM's high-water marks (audit/mark.py) prove that the database was
not rolled back or its tail cut off; exported checkpoints do the same from outside. Once
the trail is proven intact, the rows it names are checked against it (audit/freshness.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Result, Row, func, null, select

from airflow_provider_mlsecrets import canonical
from airflow_provider_mlsecrets.audit import anchor, freshness
from airflow_provider_mlsecrets.audit import mark as hsm_mark
from airflow_provider_mlsecrets.audit.checkpoint import ChainPoint, Checkpoint
from airflow_provider_mlsecrets.audit.log import CHAINS
from airflow_provider_mlsecrets.audit.record import Entry, genesis, next_hash, record_prefix
from airflow_provider_mlsecrets.keys import KeyProvider, MacKey
from airflow_provider_mlsecrets.store.models import AuditAnchor, AuditHead, AuditRecord

Progress = Callable[[int], None]
PROGRESS_STEP = 1000
FETCH_BATCH = 5000  # records per fetch from the database
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
    rolled_back: bool = False  # behind, or off, the HSM's high-water mark
    notes: list[str] = field(default_factory=list)  # facts worth knowing, not failures
    heads: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # as verified

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
    else:
        for chain in range(1, CHAINS + 1):
            if chain not in heads:
                report.fail(chain, None, f"chain {chain} has no head: it was removed from "
                            "the database; restore it from backup")
        for chain in sorted(set(heads) - set(range(1, CHAINS + 1))):
            report.fail(chain, None, f"chain {chain} is not one of the vault's chains (1 to "
                        f"{CHAINS}): its head was planted in the database")
    if checkpoint is not None and checkpoint.vault_id != vault_id:
        report.fail(0, None, f"the checkpoint is for vault {checkpoint.vault_id}, not {vault_id}")
    _check_extents(connection, heads, report)
    latest, starts = _anchors(connection, keys, vault_id, report)
    marks = {chain: hsm_mark.read(keys, vault_id, chain) for chain in heads}
    wanted: dict[int, set[int]] = {chain: set() for chain in heads}
    for point in checkpoint.chains if checkpoint is not None else ():
        wanted.setdefault(point.chain, set()).add(point.seq)
    for chain, found in marks.items():
        if found is not None:
            wanted[chain].add(found.seq)
    walked: dict[tuple[int, int], bytes] = {}
    for chain, head in sorted(heads.items()):
        report.chains += 1
        _verify_chain(connection, keys, vault_id, chain, head, report, all_seals, progress,
                      wanted.get(chain, set()), walked, starts.get(chain))
    _check_prunes(connection, latest, starts, heads, report)
    for chain, found in sorted(marks.items()):
        if found is not None:
            _check_mark(found, heads[chain], starts.get(chain), walked, report)
    if checkpoint is not None:
        for point in checkpoint.chains:
            start = starts.get(point.chain)
            if start is not None and point.seq <= start[0]:
                _point_below_anchor(keys, point, start, report)
                continue
            _check_point(keys, point, heads.get(point.chain),
                         walked.get((point.chain, point.seq)), report)
    if report.ok:  # only an intact trail can say which rows are behind it
        for chain, _, problem in freshness.behind(connection):
            report.fail(chain, None, problem)  # the record it names is sound; the row is not
    if report.ok:
        report.heads = {chain: (h.seq, h.hash) for chain, h in heads.items()}
    return report


def _anchors(connection: Connection, keys: KeyProvider, vault_id: str, report: Report
             ) -> tuple[dict[int, Row[Any]], dict[int, tuple[int, bytes]]]:
    """Each pruned chain's newest anchor, and the start it gives the chain when it carries
    this vault's anchor seal (a record's seal copied into the table is not one)."""
    latest: dict[int, Row[Any]] = {}
    for row in connection.execute(select(AuditAnchor).order_by(AuditAnchor.seq)):
        latest[row.chain] = row
    starts = {}
    for chain, row in latest.items():
        if row.prune_request is None:
            report.fail(chain, row.seq, f"chain {chain}: the anchor at record {row.seq} "
                        "predates anchor seals and was not resealed: run 'mlsecrets init' to "
                        "reseal it (it is refused if no sealed audit.prune record names it)")
        elif not anchor.sealed(keys, vault_id, chain, row.seq, row.hash, row.prune_request,
                               row.seal):
            report.fail(chain, row.seq, f"chain {chain}: the anchor at record {row.seq} is "
                        "not sealed by this vault's HSM: it was planted in the database to "
                        "excuse deleted records")
        else:
            starts[chain] = (row.seq, row.hash)
    return latest, starts


def _check_prunes(connection: Connection, latest: dict[int, Row[Any]],
                  starts: dict[int, tuple[int, bytes]], heads: dict[int, Row[Any]],
                  report: Report) -> None:
    """The prune that made each anchor must have left its own record, allowed, on the
    verified part of the trail and naming that anchor; or that record was itself pruned
    since, by a later prune (whose anchors are checked the same way)."""
    requests = {row.prune_request for row in latest.values()}
    for chain, row in sorted(latest.items()):
        if chain not in starts:
            continue
        found = connection.execute(select(
            AuditRecord.chain, AuditRecord.seq, AuditRecord.reason, AuditRecord.outcome).where(
            AuditRecord.request_id == row.prune_request,
            AuditRecord.action == "audit.prune")).all()
        note = anchor.note(chain, row.seq, row.hash)
        if not found:
            if len(requests) > 1:
                continue  # cut away by a later prune
            report.fail(chain, row.seq, f"chain {chain}: no audit.prune record names the "
                        f"anchor at record {row.seq}: records were deleted outside "
                        "'mlsecrets audit prune'")
        elif not any(r.outcome == "allowed" and note in r.reason
                     and starts.get(r.chain, (0,))[0] < r.seq <= heads[r.chain].seq
                     for r in found if r.chain in heads):
            report.fail(chain, row.seq, f"chain {chain}: the audit.prune record of the anchor "
                        f"at record {row.seq} is not on the verified trail or does not name it")


def _check_mark(found: hsm_mark.Mark, head: Row[Any], start: tuple[int, bytes] | None,
                walked: dict[tuple[int, int], bytes], report: Report) -> None:
    """The database against the HSM's high-water mark of this chain."""
    chain = found.chain
    before = len(report.problems)
    if found.seq > head.seq:
        report.fail(chain, head.seq + 1, f"chain {chain} ends at record {head.seq}, but the "
                    f"HSM's high-water mark says it had reached record {found.seq} at "
                    f"{found.at}: the database was rolled back to an older copy or its newest "
                    "records were deleted; restore the newest backup")
    elif found.seq == 0:
        pass  # marked at genesis: every chain starts there
    elif start is not None and found.seq <= start[0]:
        if found.seq == start[0] and not hmac.compare_digest(found.hash, start[1]):
            report.fail(chain, found.seq, f"chain {chain}: the anchor at record {found.seq} "
                        "differs from the HSM's high-water mark")
    elif not hmac.compare_digest(walked.get((chain, found.seq), b""), found.hash):
        report.fail(chain, found.seq, f"chain {chain}: record {found.seq} differs from the "
                    f"HSM's high-water mark (written {found.at}): the database was rolled "
                    "back to an older copy and written since, or the trail was rewritten")
    report.rolled_back = report.rolled_back or len(report.problems) > before


def since_mark(connection: Connection, keys: KeyProvider, vault_id: str, head: Row[Any],
               found: hsm_mark.Mark) -> Report:
    """Check one chain from its mark (or, if a prune passed the mark, its sealed anchor) to
    ``head``: what the vault checks before it moves the mark on its own."""
    report, chain = Report(), head.chain
    cut = connection.execute(select(AuditAnchor).where(AuditAnchor.chain == chain).order_by(
        AuditAnchor.seq.desc()).limit(1)).one_or_none()
    start = (found.seq, found.hash)
    if cut is not None and found.seq <= cut.seq:
        if not anchor.sealed(keys, vault_id, chain, cut.seq, cut.hash, cut.prune_request,
                             cut.seal):
            report.fail(chain, cut.seq, f"chain {chain}: the anchor at record {cut.seq} is "
                        "not sealed by this vault's HSM")
            return report
        start = (cut.seq, cut.hash)
    if found.seq > head.seq:
        _check_mark(found, head, None, {}, report)  # behind the mark: rolled back
    elif head.seq == start[0]:
        if not hmac.compare_digest(head.hash, start[1]):
            report.fail(chain, head.seq, f"chain {chain}: its head differs from the HSM's "
                        "high-water mark: the trail was rewritten or rolled back")
            report.rolled_back = True
    else:  # the first record after the mark must chain onto the mark's own hash
        _verify_chain(connection, keys, vault_id, chain, head, report, False, None, set(), {},
                      start)
        report.rolled_back = not report.ok
    return report


def advance_marks(keys: KeyProvider, vault_id: str, report: Report, at: str) -> None:
    """After a verification that passed (with every head still locked): move each chain's
    mark in the HSM to the head it verified."""
    for chain, (seq, digest) in sorted(report.heads.items()):
        previous = hsm_mark.read(keys, vault_id, chain)
        if previous is None or (previous.seq, previous.hash) != (seq, digest):
            hsm_mark.write(keys, vault_id, chain, seq, digest, at, previous)


def _point_below_anchor(keys: KeyProvider, point: ChainPoint, start: tuple[int, bytes],
                        report: Report) -> None:
    """A checkpoint inside the pruned part of its chain: reported for what it is."""
    chain, seq = point.chain, point.seq
    if not _seal_ok(keys, point.hash, point.seal):
        report.fail(chain, None, f"checkpoint for chain {chain} at record {seq} has a bad "
                    "seal: it was not made by this vault's HSM")
    elif seq == start[0]:
        if not hmac.compare_digest(point.hash, start[1]):
            report.fail(chain, seq, f"chain {chain}: record {seq} differs from the checkpoint")
    else:
        report.notes.append(
            f"chain {chain}: the checkpoint's record {seq} was pruned since (the chain now "
            f"starts after record {start[0]}, whose sealed anchor proves the chain passed "
            "it); check the record itself in that prune's export: 'mlsecrets audit "
            "verify-export FILE --checkpoint CHECKPOINT'")


def _check_extents(connection: Connection, heads: dict[int, Row[Any]], report: Report) -> None:
    """Every record must lie on a chain with a head and at or below it: a record planted
    beyond the head, or on a chain with no head, would otherwise never be walked."""
    for chain, top in _extents(connection):
        head = heads.get(chain)
        if head is None:
            report.fail(chain, 1, f"chain {chain} has records but no head: records were "
                        "inserted outside the vault")
        elif top > head.seq:
            report.fail(chain, head.seq + 1, f"chain {chain} has records beyond its head "
                        f"(up to {top}, head at {head.seq}): records were inserted, or the "
                        "head was moved back")


def _extents(connection: Connection) -> Iterator[tuple[int, int]]:
    """``(chain, max(seq))`` of every chain that has records, two index seeks per chain
    (a ``GROUP BY`` would read the whole primary key index)."""
    chain = connection.execute(select(func.min(AuditRecord.chain))).scalar_one_or_none()
    while chain is not None:
        top = connection.execute(select(func.max(AuditRecord.seq)).where(
            AuditRecord.chain == chain)).scalar_one()
        yield chain, top
        chain = connection.execute(select(func.min(AuditRecord.chain)).where(
            AuditRecord.chain > chain)).scalar_one_or_none()


def _rows(connection: Connection, chain: int, upto: int, *, seals: bool = True,
          after: int = 0) -> Result[Any] | Generator[Any, None, None]:
    """The chain's records up to its head as read: records committed after the head was
    read belong to the next verification, not to a false alarm in this one. Without
    ``seals`` the seal column reads as NULL (one blob less to fetch per record)."""
    columns = _COLUMNS if seals else (*_COLUMNS[:-1], null())
    # Per-statement options: Connection.execution_options() would change the connection
    # itself, and every later statement on it would become a server-side cursor.
    result = connection.execute(
        select(*columns).where(AuditRecord.chain == chain, AuditRecord.seq > after,
                               AuditRecord.seq <= upto)
        .order_by(AuditRecord.seq).execution_options(yield_per=FETCH_BATCH))
    if connection.dialect.name == "postgresql":
        return _fetched_ahead(result)
    return result


_END = object()


def _fetched_ahead(result: Result[Any]) -> Generator[Any, None, None]:
    """The rows of ``result``, with the next batch fetched by a thread while this one is
    hashed: from a database server, waiting for the next batch (spent in the socket, off
    the GIL) then overlaps the hashing instead of following it. However the reader stops
    (done, early, or by an exception), closing this generator stops and joins the thread
    and closes the result before the connection is used for anything else."""
    batches: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def hand_over(item: Any) -> bool:
        """Queue ``item`` unless the reader has stopped; whether it was queued."""
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fetch() -> None:
        try:
            for batch in result.partitions():
                if not hand_over(batch):
                    return
            hand_over(_END)
        except BaseException as exc:  # handed to the reader, raised there
            hand_over(exc)

    worker = threading.Thread(target=fetch, name="mlsecrets-audit-fetch", daemon=True)
    worker.start()
    try:
        while (batch := batches.get()) is not _END:
            if isinstance(batch, BaseException):
                raise batch
            yield from batch
    finally:
        stop.set()
        worker.join()
        result.close()


class _Prefixed(dict[object, bytes]):
    """Text fields as :func:`canonical.encode` writes them (length prefix, UTF-8), memoised:
    principals, roles, actions, paths, outcomes, reasons and contexts repeat throughout a
    trail. Only ``str`` keys are kept, so no other value (``1``, ``1.0``, ``True``, bytes)
    can ever be answered from a string's entry; anything else is encoded afresh (and raises
    exactly what the canonical encoder raises)."""

    def __missing__(self, value: object) -> bytes:
        out = canonical.prefixed(value)  # type: ignore[arg-type]
        if type(value) is str:
            self[value] = out
        return out


_CACHE_LIMIT = 50_000  # distinct field values kept (checked every PROGRESS_STEP records)
_SIZES = tuple(canonical.length_prefix(n) for n in range(1024))  # for ts and request_id


def _verify_chain(connection: Connection, keys: KeyProvider, vault_id: str, chain: int,
                  head: Row[Any], report: Report, all_seals: bool,
                  progress: Progress | None, wanted: set[int],
                  walked: dict[tuple[int, int], bytes],
                  start: tuple[int, bytes] | None = None) -> None:
    # The hot loop: one SHA-256 per record over canonical(r) built inline, byte for byte
    # what record.next_hash builds (tests/test_audit_encoding.py holds them to each other
    # and to the known answer of docs/formats.md).
    # A value of an unexpected type or size takes the reference encoder instead.
    # a pruned chain starts after its anchor, with the anchor's hash
    first, previous = start if start is not None else (0, genesis(vault_id, chain))
    expected = first + 1
    prefix, fields, sizes = record_prefix(chain), _Prefixed(), _SIZES
    sha256, join, same = hashlib.sha256, b"".join, hmac.compare_digest
    countdown = PROGRESS_STEP - report.records % PROGRESS_STEP
    rows: Any = _rows(connection, chain, head.seq, seals=all_seals, after=first)
    try:
        for (seq, ts, principal, roles, action, path, version, outcome, reason, request_id,
             context, stored, seal) in rows:
            if seq != expected:
                report.fail(chain, expected, f"chain {chain}: record {expected} is missing "
                            f"(the next record is {seq}): records were deleted or inserted")
                break
            try:
                t, q = ts.encode(), request_id.encode()
                digest = sha256(join((
                    previous, prefix, seq.to_bytes(8, "big"), sizes[len(t)], t, fields[principal],
                    fields[roles], fields[action], fields[path],
                    fields["" if version is None else str(version)], fields[outcome],
                    fields[reason], sizes[len(q)], q, fields[context]))).digest()
            except Exception:  # not text, or a field of 1 KiB or more: the reference encoder
                digest = next_hash(previous, chain, seq, Entry(
                    ts=ts, principal=principal, roles=roles, action=action, path=path,
                    version=version, outcome=outcome, reason=reason, request_id=request_id,
                    context=context))
            if not same(digest, stored):
                report.fail(chain, seq, f"chain {chain}: record {seq} does not match the chain: "
                            "it, or the one before it, was changed, inserted or reordered")
                break
            if all_seals and not _seal_ok(keys, digest, seal):
                report.fail(chain, seq, f"chain {chain}: record {seq} has a bad seal: "
                            "the trail was rewritten from here on")
                break
            if seq in wanted:
                walked[(chain, seq)] = digest  # the hash as recomputed, not as stored
            previous = digest
            expected += 1
            countdown -= 1
            if not countdown:
                countdown = PROGRESS_STEP
                if len(fields) > _CACHE_LIMIT:
                    fields.clear()
                if progress is not None:
                    progress(PROGRESS_STEP)
        else:  # the whole chain was walked
            _count(report, expected - 1 - first, all_seals)
            _finish_chain(connection, keys, chain, head, report, all_seals, expected,
                          previous, first)
            return
    finally:
        rows.close()  # however it ended: the read (and any fetching thread) ends here
    _count(report, expected - 1 - first, all_seals)


def _count(report: Report, records: int, all_seals: bool) -> None:
    """``records`` were walked (and, with ``all_seals``, their seals checked)."""
    report.records += records
    report.seals_checked += records if all_seals else 0


def _finish_chain(connection: Connection, keys: KeyProvider, chain: int, head: Row[Any],
                  report: Report, all_seals: bool, expected: int, previous: bytes,
                  first: int = 0) -> None:
    if expected > first + 1 and not all_seals:
        report.seals_checked += 1
        last_seal = connection.execute(select(AuditRecord.seal).where(
            AuditRecord.chain == chain, AuditRecord.seq == expected - 1)).scalar_one_or_none()
        if not _seal_ok(keys, previous, last_seal):
            # Someone recomputed the hashes: find the first record whose seal fails.
            with contextlib.closing(_rows(connection, chain, head.seq, after=first)) as rows:
                for row in rows:
                    if not _seal_ok(keys, row.hash, row.seal):
                        report.fail(chain, row.seq, f"chain {chain}: record {row.seq} has a "
                                    "bad seal: the trail was rewritten from here on")
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
