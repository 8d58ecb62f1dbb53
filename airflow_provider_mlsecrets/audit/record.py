"""The audit record format and its hash chain (docs/formats.md, "Audit record").

``canonical(r) = canonical.encode("mlsecrets-audit-v1", chain, seq, ts, principal, roles,
action, path, version, outcome, reason, request_id, context)`` where ``version`` is its
decimal text or empty, ``ts`` is ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` and ``context`` is JSON with
sorted keys and no spaces.

``h_0 = SHA-256(canonical.encode("mlsecrets-audit-genesis-v1", vault_id, chain))`` and
``h_n = SHA-256(h_{n-1} || canonical(r_n))``; ``seal_n = HMAC-SHA256(K_audit, h_n)`` inside
the HSM. A record never holds a secret value: the fields above are all there is.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from airflow_provider_mlsecrets import canonical

RECORD_TAG = "mlsecrets-audit-v1"
GENESIS_TAG = "mlsecrets-audit-genesis-v1"
ContextValue = str | int | None


class Outcome(str, enum.Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    NOT_FOUND = "not_found"
    ERROR = "error"


def format_ts(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# the context key naming the rows an operation sealed (audit/freshness.py): the vault's
# alone, so a caller's context never carries it into a record
WROTE = "wrote"


def canonical_context(context: Mapping[str, ContextValue]) -> str:
    return json.dumps({k: v for k, v in context.items() if k != WROTE}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Entry:
    """What happened, before it is placed in a chain."""

    ts: str
    principal: str
    roles: str
    action: str
    path: str
    version: int | None
    outcome: str
    reason: str
    request_id: str
    context: str = field(default="{}")


def record_bytes(chain: int, seq: int, entry: Entry) -> bytes:
    return canonical.encode(
        RECORD_TAG, chain, seq, entry.ts, entry.principal, entry.roles, entry.action,
        entry.path, "" if entry.version is None else str(entry.version),
        entry.outcome, entry.reason, entry.request_id, entry.context,
    )


def record_prefix(chain: int) -> bytes:
    """The bytes every record of ``chain`` starts with: ``canonical(r)`` up to and including
    the length prefix of ``seq`` (the verifier encodes the rest of each record inline)."""
    return canonical.encode(RECORD_TAG, chain) + canonical.length_prefix(8)


def genesis(vault_id: str, chain: int) -> bytes:
    return hashlib.sha256(canonical.encode(GENESIS_TAG, vault_id, chain)).digest()


def next_hash(previous: bytes, chain: int, seq: int, entry: Entry) -> bytes:
    return hashlib.sha256(previous + record_bytes(chain, seq, entry)).digest()
