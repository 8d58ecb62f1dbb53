"""The trail's high-water marks, kept in the HSM (docs/formats.md, "High-water mark").

A database owner can put back yesterday's copy of the database, or cut records off a
chain's end: every remaining record still hashes and seals correctly. What catches that is
a memory the database owner cannot reach: for each chain, the newest ``(seq, hash)`` the
vault saw committed, kept as a private data object on the HSM token
(``<prefix>-audit-mark-<chain>``) and authenticated with the audit MAC key over its own
domain-separated encoding::

    body = canonical.encode("mlsecrets-audit-mark-v1", vault_id, chain, generation, seq,
                            hash, at)
    value = body || HMAC-SHA256(K_audit, body)

``generation`` grows by one at every write, so when a write leaves two objects behind (it
creates the new one before it destroys the old) the reader takes the newest. A trail that
is behind its mark, or differs from it at the mark's record, was rolled back or truncated.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from airflow_provider_mlsecrets import canonical
from airflow_provider_mlsecrets.keys import KeyProvider, MacKey

MARK_TAG = "mlsecrets-audit-mark-v1"
_MAC_BYTES = 32


@dataclass(frozen=True)
class Mark:
    chain: int
    generation: int
    seq: int
    hash: bytes
    at: str  # when it was written, UTC, as audit records write time


def object_name(chain: int) -> str:
    return f"audit-mark-{chain}"


def body(vault_id: str, mark: Mark) -> bytes:
    return canonical.encode(MARK_TAG, vault_id, mark.chain, mark.generation, mark.seq,
                            mark.hash, mark.at)


def read(keys: KeyProvider, vault_id: str, chain: int) -> Mark | None:
    """The chain's newest authentic mark; ``None`` if none was ever written. An object that
    does not authenticate is ignored: only the HSM's own MAC makes a mark."""
    best: Mark | None = None
    for value in keys.load_data(object_name(chain)):
        mark = _parse(keys, vault_id, chain, value)
        if mark is not None and (best is None or mark.generation > best.generation):
            best = mark
    return best


def write(keys: KeyProvider, vault_id: str, chain: int, seq: int, digest: bytes, at: str,
          previous: Mark | None) -> Mark:
    mark = Mark(chain=chain, generation=(previous.generation + 1 if previous else 1), seq=seq,
                hash=digest, at=at)
    data = body(vault_id, mark)
    keys.store_data(object_name(chain), data + keys.mac(MacKey.AUDIT, data))
    return mark


def _parse(keys: KeyProvider, vault_id: str, chain: int, value: bytes) -> Mark | None:
    if len(value) <= _MAC_BYTES:
        return None
    data, tag = value[:-_MAC_BYTES], value[-_MAC_BYTES:]
    if not hmac.compare_digest(keys.mac(MacKey.AUDIT, data), tag):
        return None
    try:
        tag_text, vault, chain_b, generation, seq, digest, at = canonical.decode(data)
        moment = at.decode()
    except ValueError:  # UnicodeDecodeError is one
        return None
    if tag_text != MARK_TAG.encode() or vault != vault_id.encode() \
            or int.from_bytes(chain_b, "big") != chain:
        return None
    return Mark(chain=chain, generation=int.from_bytes(generation, "big"),
                seq=int.from_bytes(seq, "big"), hash=digest, at=moment)
