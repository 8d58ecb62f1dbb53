"""Anchors: where a pruned chain now starts (docs/formats.md, "Anchor").

An anchor names the last record a prune moved out of the database: its chain, seq and
hash, and the request id of the ``audit.prune`` operation that made it. Its seal is an
HMAC under the audit key over its own, domain-separated encoding::

    seal = HMAC-SHA256(K_audit, canonical.encode("mlsecrets-audit-anchor-v1", vault_id,
                                                 chain, seq, hash, prune_request))

so no record seal (an HMAC over a bare hash) can stand in for it: a database writer who
copies a record's hash and seal into the anchors table has planted an anchor that fails.
"""

from __future__ import annotations

import hmac
from typing import Any

from sqlalchemy import Connection, select, update

from airflow_provider_mlsecrets import canonical
from airflow_provider_mlsecrets.audit.record import Entry, genesis, next_hash
from airflow_provider_mlsecrets.keys import KeyProvider, MacKey
from airflow_provider_mlsecrets.store.models import AuditAnchor, AuditRecord

ANCHOR_TAG = "mlsecrets-audit-anchor-v1"


def body(vault_id: str, chain: int, seq: int, digest: bytes, prune_request: str) -> bytes:
    return canonical.encode(ANCHOR_TAG, vault_id, chain, seq, digest, prune_request)


def seal(keys: KeyProvider, vault_id: str, chain: int, seq: int, digest: bytes,
         prune_request: str) -> bytes:
    return keys.mac(MacKey.AUDIT, body(vault_id, chain, seq, digest, prune_request))


def sealed(keys: KeyProvider, vault_id: str, chain: int, seq: int, digest: bytes,
           prune_request: str | None, given: bytes | None) -> bool:
    """Whether ``given`` is this vault's seal of that anchor (an anchor without a prune
    request id predates anchor seals and is not accepted)."""
    return (prune_request is not None and given is not None and hmac.compare_digest(
        seal(keys, vault_id, chain, seq, digest, prune_request), given))


def note(chain: int, seq: int, digest: bytes) -> str:
    """How an ``audit.prune`` record names the anchor a chain starts from after it."""
    return f"chain {chain} from {seq} ({digest.hex()[:16]})"


def reseal_legacy(connection: Connection, keys: KeyProvider, vault_id: str) -> int:
    """Seal, as anchors, the anchors written before anchor seals (``mlsecrets init`` after
    migration 0005); return how many. One is resealed only if an allowed ``audit.prune``
    record names it whose seal is the HSM's and whose hash recomputes from the record
    before it, so the record is the vault's own, unchanged: an anchor planted with a
    copied record seal (the forgery this closes) finds none and stays refused."""
    done = 0
    for row in connection.execute(select(AuditAnchor).where(
            AuditAnchor.prune_request.is_(None))).all():
        for record in connection.execute(select(AuditRecord).where(
                AuditRecord.action == "audit.prune", AuditRecord.outcome == "allowed",
                AuditRecord.reason.contains(note(row.chain, row.seq, row.hash),
                                            autoescape=True))).all():
            if _authentic(connection, keys, vault_id, record):
                connection.execute(update(AuditAnchor).where(
                    AuditAnchor.chain == row.chain, AuditAnchor.seq == row.seq).values(
                    prune_request=record.request_id,
                    seal=seal(keys, vault_id, row.chain, row.seq, row.hash, record.request_id)))
                done += 1
                break
    return done


def _authentic(connection: Connection, keys: KeyProvider, vault_id: str, record: Any) -> bool:
    chain, seq = record.chain, record.seq
    previous = (genesis(vault_id, chain) if seq == 1 else connection.execute(
        select(AuditRecord.hash).where(AuditRecord.chain == chain, AuditRecord.seq == seq - 1)
    ).scalar_one_or_none() or connection.execute(
        select(AuditAnchor.hash).where(AuditAnchor.chain == chain, AuditAnchor.seq == seq - 1)
    ).scalar_one_or_none())
    if previous is None or record.seal is None:
        return False
    digest = next_hash(previous, chain, seq, Entry(
        ts=record.ts, principal=record.principal, roles=record.roles, action=record.action,
        path=record.path, version=record.version, outcome=record.outcome,
        reason=record.reason, request_id=record.request_id, context=record.context))
    return (hmac.compare_digest(digest, record.hash)
            and hmac.compare_digest(keys.mac(MacKey.AUDIT, digest), record.seal))
