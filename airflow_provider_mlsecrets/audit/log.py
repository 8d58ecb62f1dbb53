"""Appending to the audit trail, inside the caller's transaction.

The record is added in the same transaction as the action it describes, so the two commit
or roll back together: no audit record, no change and no secret. The trail is
``CHAINS`` independently hashed and sealed chains, each with a head row that an append
locks (``SELECT … FOR UPDATE``), so every record's predecessor is unambiguous however many
processes write at once. An append takes chain 1 when it is free and otherwise the first
chain no other transaction holds (``SKIP LOCKED``), so concurrent writers on PostgreSQL do
not queue on one row until every chain is busy; SQLite's ``BEGIN IMMEDIATE`` serialises
writers anyway, and there everything lands on chain 1.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets.audit.record import Entry, genesis, next_hash
from airflow_provider_mlsecrets.errors import AuditError
from airflow_provider_mlsecrets.keys import KeyProvider, MacKey
from airflow_provider_mlsecrets.store.models import AuditHead, AuditRecord

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
_LOCK_HEAD = select(_HEADS.c.chain, _HEADS.c.seq, _HEADS.c.hash).where(
    _HEADS.c.chain == bindparam("chain")).with_for_update()
_FREE_HEAD = select(_HEADS.c.chain, _HEADS.c.seq, _HEADS.c.hash).where(
    _HEADS.c.chain.between(1, CHAINS)).order_by(_HEADS.c.chain).limit(1).with_for_update(
    skip_locked=True)
_MOVE_HEAD = update(_HEADS).where(_HEADS.c.chain == bindparam("head")).values(
    seq=bindparam("new_seq"), hash=bindparam("new_hash"))
_ADD = insert(_RECORDS)


def append(session: Session, keys: KeyProvider, entry: Entry) -> tuple[int, int]:
    """Add ``entry`` to a free chain and seal it; return its ``(chain, seq)``."""
    connection = session.connection()
    # a free chain, else wait for chain 1 (all busy, or, after tampering, none left)
    head = (connection.execute(_FREE_HEAD).one_or_none()
            or connection.execute(_LOCK_HEAD, {"chain": DEFAULT_CHAIN}).one_or_none())
    chain = head.chain if head is not None else DEFAULT_CHAIN
    if head is None:
        raise AuditError(
            f"audit chain {chain} has no head: on a new vault run 'mlsecrets init'; on an "
            "existing one the trail was tampered with: restore the database from backup")
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
        raise AuditError(
            f"audit chain {chain} already has a record {seq} beyond its head: the trail was "
            "tampered with; run 'mlsecrets audit verify' and restore from backup") from None
    connection.execute(_MOVE_HEAD, {"head": chain, "new_seq": seq, "new_hash": digest})
    return chain, seq
