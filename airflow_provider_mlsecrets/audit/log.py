"""Appending to the audit trail, inside the caller's transaction.

The record is added in the same transaction as the action it describes, so the two commit
or roll back together: no audit record, no change and no secret. The trail is
``CHAINS`` independently hashed and sealed chains, each with a head row that an append
locks (``SELECT … FOR UPDATE``), so every record's predecessor is unambiguous however many
processes write at once. An append takes chain 1 when it is free and otherwise the first
chain no other transaction holds (``SKIP LOCKED``), so concurrent writers on PostgreSQL do
not queue on one row until every chain is busy; SQLite's ``BEGIN IMMEDIATE`` serialises
writers anyway, and there everything lands on chain 1.

The vault never seals over a head it has not checked: before a record is chained onto a
head, the head's own seal (or, for a head a prune moved out, its anchor's seal; for a new
chain, the genesis hash) is checked in the HSM. Whoever can write the database can
recompute hashes, but can then no longer get the vault to seal them. What this process
sealed or checked itself is remembered, so the common case costs no HSM call.
"""

from __future__ import annotations

import hmac
from typing import cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets.audit import anchor
from airflow_provider_mlsecrets.audit.record import Entry, genesis, next_hash
from airflow_provider_mlsecrets.errors import AuditChainBroken, AuditError
from airflow_provider_mlsecrets.keys import KeyProvider, MacKey
from airflow_provider_mlsecrets.store.models import AuditAnchor, AuditHead, AuditRecord

DEFAULT_CHAIN = 1
CHAINS = 4  # chains 1..CHAINS exist in every vault (init; migration 0003 for older ones)


def start_chains(session: Session, vault_id: str) -> None:
    """Create every chain's head at its genesis hash (idempotent)."""
    for chain in range(1, CHAINS + 1):
        if session.get(AuditHead, chain) is None:
            session.add(AuditHead(chain=chain, seq=0, hash=genesis(vault_id, chain)))
    session.flush()


_HEADS = cast(Table, AuditHead.__table__)
_RECORDS = cast(Table, AuditRecord.__table__)
# the head row, locked, with its record's stored hash and seal in the same round trip (the
# record is NULL when a prune moved it out, or when the lock was waited for: see
# check_head); FOR UPDATE OF the head only, since PostgreSQL locks no row on the nullable
# side of an outer join
_HEAD_AND_RECORD = select(_HEADS.c.chain, _HEADS.c.seq, _HEADS.c.hash,
                          _RECORDS.c.hash.label("record_hash"), _RECORDS.c.seal).outerjoin(
    _RECORDS, (_RECORDS.c.chain == _HEADS.c.chain) & (_RECORDS.c.seq == _HEADS.c.seq))
_LOCK_HEAD = _HEAD_AND_RECORD.where(_HEADS.c.chain == bindparam("chain")).with_for_update(
    of=_HEADS)
_FREE_HEAD = _HEAD_AND_RECORD.where(_HEADS.c.chain.between(1, CHAINS)).order_by(
    _HEADS.c.chain).limit(1).with_for_update(skip_locked=True, of=_HEADS)
_MOVE_HEAD = update(_HEADS).where(_HEADS.c.chain == bindparam("head")).values(
    seq=bindparam("new_seq"), hash=bindparam("new_hash"))
_ADD = insert(_RECORDS)
_ANCHORS = cast(Table, AuditAnchor.__table__)
_HEAD_RECORD = select(_RECORDS.c.hash, _RECORDS.c.seal).where(
    _RECORDS.c.chain == bindparam("chain"), _RECORDS.c.seq == bindparam("seq"))
_HEAD_ANCHOR = select(_ANCHORS.c.hash, _ANCHORS.c.seal, _ANCHORS.c.prune_request).where(
    _ANCHORS.c.chain == bindparam("chain"), _ANCHORS.c.seq == bindparam("seq"))

# (vault id, chain) -> the (seq, hash) this process last sealed or checked there
_CHECKED: dict[tuple[str, int], tuple[int, bytes]] = {}


def tampered(chain: int, seq: int, what: str) -> AuditChainBroken:
    return AuditChainBroken(
        f"audit chain {chain} was tampered with: {what}. Nothing was done. Run 'mlsecrets "
        "audit verify' to see where, and restore the database from a backup", chain=chain,
        seq=seq)


def check_head(connection: Connection, keys: KeyProvider, vault_id: str, chain: int,
               seq: int, digest: bytes, record: tuple[bytes | None, bytes | None] | None = None
               ) -> None:
    """Raise :class:`AuditChainBroken` unless ``(seq, digest)`` is a head the vault made:
    the genesis hash, a record whose seal is the HSM's over that hash, or an anchor (a
    head a prune moved out) sealed as one."""
    if _CHECKED.get((vault_id, chain)) == (seq, digest):
        return
    same = hmac.compare_digest
    if record is None or record[0] is None:
        # not read with the head, or read with it but missing: on PostgreSQL a head whose
        # lock was waited for is re-read at its new version while the joined record comes
        # from the statement's older snapshot (NULL then), so a miss is read again now
        row = connection.execute(_HEAD_RECORD, {"chain": chain, "seq": seq}).one_or_none()
        record = (row.hash, row.seal) if row is not None else (None, None)
    stored, seal = record
    if seq == 0:
        ok = same(digest, genesis(vault_id, chain))
    elif stored is not None:
        ok = (same(stored, digest) and seal is not None
              and same(keys.mac(MacKey.AUDIT, digest), seal))
    elif (cut := connection.execute(_HEAD_ANCHOR, {"chain": chain, "seq": seq}).one_or_none()):
        ok = same(cut.hash, digest) and anchor.sealed(keys, vault_id, chain, seq, digest,
                                                      cut.prune_request, cut.seal)
    else:
        ok = False
    if not ok:
        raise tampered(chain, seq, f"its head (record {seq}) is not sealed by this vault's "
                       "HSM, so the vault will not seal anything after it")
    _CHECKED[(vault_id, chain)] = (seq, digest)


def append(session: Session, keys: KeyProvider, entry: Entry, vault_id: str
           ) -> tuple[int, int]:
    """Add ``entry`` to a free chain, after checking that chain's head, and seal it;
    return its ``(chain, seq)``."""
    connection = session.connection()
    # a free chain, else wait for chain 1 (all busy, or, after tampering, none left)
    head = (connection.execute(_FREE_HEAD).one_or_none()
            or connection.execute(_LOCK_HEAD, {"chain": DEFAULT_CHAIN}).one_or_none())
    chain = head.chain if head is not None else DEFAULT_CHAIN
    if head is None:
        raise AuditError(
            f"audit chain {chain} has no head: on a new vault run 'mlsecrets init'; on an "
            "existing one the trail was tampered with: restore the database from backup")
    check_head(connection, keys, vault_id, chain, head.seq, head.hash,
               (head.record_hash, head.seal))
    seq: int = head.seq + 1
    digest = next_hash(head.hash, chain, seq, entry)
    seal = keys.mac(MacKey.AUDIT, digest)
    try:
        connection.execute(_ADD, {
            "chain": chain, "seq": seq, "ts": entry.ts, "principal": entry.principal,
            "roles": entry.roles, "action": entry.action, "path": entry.path,
            "version": entry.version, "outcome": entry.outcome, "reason": entry.reason,
            "request_id": entry.request_id, "context": entry.context, "hash": digest,
            "seal": seal})
    except sa_exc.IntegrityError:
        raise tampered(chain, seq, f"it already has a record {seq} beyond its head") from None
    connection.execute(_MOVE_HEAD, {"head": chain, "new_seq": seq, "new_hash": digest})
    _CHECKED[(vault_id, chain)] = (seq, digest)
    return chain, seq
