"""Rows put back behind the audit trail: replays the row MACs alone cannot see.

Whoever can write the database but has no HSM cannot forge a row's MAC, but can put back
an older copy of a row with its MAC: a principal as it was before its revocation, a secret
before a deny-relevant change or before its newest version, the critical paths before one
was added. Each seal counts the row's ``generation`` under its MAC (service/_integrity.py),
and the audit record of the operation that sealed it names the new generation in its
context, ``"wrote"``: a JSON list of ``[kind, key, generation]``. Verification, once the
trail itself is proven intact, compares each row with the newest generation its trail
names: a row behind it was put back. Deleting the records that name the newer generation
breaks the chain below the HSM's mark, which verification reports anyway.

Not covered: a row whose every change record was pruned away, and a change made since the
newest HSM mark whose records were cut with it (the window the threat model states).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, select

from airflow_provider_mlsecrets.audit.record import WROTE
from airflow_provider_mlsecrets.store.models import (
    AccessRequest,
    AuditRecord,
    Principal,
    Secret,
    VaultPolicy,
)

_NAMES = '%"' + WROTE + '":%'  # canonical JSON: no space after the colon
_ROWS: dict[str, Any] = {  # kind: (its key column, its generation column)
    "principal": (Principal.name, Principal.generation),
    "secret": (Secret.path, Secret.generation),
    "policy": (VaultPolicy.name, VaultPolicy.generation),
    "access-request": (AccessRequest.id, AccessRequest.generation),
}


def with_written(context: str, sealed: Iterable[tuple[str, str, int]]) -> str:
    """``context`` (canonical JSON) naming the newest generation of each row ``sealed``."""
    newest: dict[tuple[str, str], int] = {}
    for kind, key, generation in sealed:
        newest[(kind, key)] = max(generation, newest.get((kind, key), 0))
    merged = json.loads(context)
    merged[WROTE] = json.dumps(sorted([kind, key, g] for (kind, key), g in newest.items()),
                               separators=(",", ":"), ensure_ascii=False)
    return json.dumps(merged, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Named:
    """Where the trail names a row's generation."""

    __slots__ = ("chain", "generation", "seq")

    def __init__(self, generation: int, chain: int, seq: int) -> None:
        self.generation, self.chain, self.seq = generation, chain, seq


def newest_named(connection: Connection) -> dict[tuple[str, str], Named]:
    """The newest generation the trail names for each row, and the record that names it."""
    newest: dict[tuple[str, str], Named] = {}
    records = connection.execute(select(AuditRecord.chain, AuditRecord.seq, AuditRecord.context)
                                 .where(AuditRecord.context.like(_NAMES)))
    for chain, seq, context in records:
        for kind, key, generation in _written(context):
            found = newest.get((kind, key))
            if found is None or generation > found.generation:
                newest[(kind, key)] = Named(generation, chain, seq)
    return newest


def behind(connection: Connection) -> list[tuple[int, int, str]]:
    """Each row behind the trail, as ``(chain, seq, problem)`` of the record it is behind."""
    newest = newest_named(connection)
    found = []
    for kind, (key_column, generation_column) in _ROWS.items():
        for key, generation in connection.execute(select(key_column, generation_column)):
            named = newest.get((kind, str(key)))
            if named is not None and generation < named.generation:
                found.append((named.chain, named.seq, (
                    f"{kind} {key} is at generation {generation}, but audit record "
                    f"{named.chain}:{named.seq} wrote its generation {named.generation}: an "
                    "older copy of the row was put back in the database (a replay); restore "
                    "the database from a backup taken after that record, or redo the changes "
                    "the trail shows since")))
    return found


def _written(context: str) -> list[tuple[str, str, int]]:
    try:
        value = json.loads(context).get(WROTE)
        entries = json.loads(value) if isinstance(value, str) else []
    except (ValueError, AttributeError):
        return []
    return [(e[0], e[1], e[2]) for e in entries if isinstance(e, list) and len(e) == 3
            and isinstance(e[0], str) and isinstance(e[1], str) and type(e[2]) is int]
