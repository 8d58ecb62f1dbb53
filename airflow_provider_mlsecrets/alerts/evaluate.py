"""Evaluating the rules over the audit trail, after a persisted cursor per chain.

Each batch is one transaction: lock the chain's cursor (``FOR UPDATE SKIP LOCKED``: a chain
another evaluator is reading is left to it), read the records after it, apply the rules,
insert each alert with ``ON CONFLICT DO NOTHING`` on its unique key, move the cursor. So a
record raises its alerts once, on any number of hosts, and a crash before the commit loses
nothing: the next pass reads those records again.

The first pass on a vault seeds: cursors at the chains' heads and the DAG/path history
from the whole past trail, so the past raises nothing. Then conditions (time-based rules)
are checked; their keys name the day, so each is raised once a day while it lasts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from airflow_provider_mlsecrets.alerts import rules
from airflow_provider_mlsecrets.alerts.config import AlertConfig
from airflow_provider_mlsecrets.audit import mark as hsm_mark
from airflow_provider_mlsecrets.audit.record import Outcome
from airflow_provider_mlsecrets.errors import AuditChainBroken, MLSecretsError
from airflow_provider_mlsecrets.store.models import (
    Alert,
    AlertCursor,
    AlertSeen,
    AuditHead,
    AuditRecord,
    Vault,
    dag_of,
)

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.service._core import Core

BATCH = 500
MAX_BATCHES = 40  # per chain per pass: a pass ends; the next one goes on from the cursor
MAX_SEEN_CACHE = 100_000
log = logging.getLogger(__name__)
_CURSORS = cast(Table, AlertCursor.__table__)
_SEEN = cast(Table, AlertSeen.__table__)
_ALERTS = cast(Table, Alert.__table__)
_AUDIT = cast(Table, AuditRecord.__table__)


@dataclass
class Evaluated:
    records: int = 0
    raised: int = 0
    skipped_chains: int = 0  # being read by another evaluator right now


def insert_ignoring(c: Connection, table: Table, row: dict[str, Any], keys: list[str]) -> bool:
    """Insert ``row`` unless one with the same ``keys`` exists; whether it was inserted."""
    dialect = postgresql if c.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**row).on_conflict_do_nothing(
        index_elements=keys).returning(table.c[keys[0]])  # rowcount is -1 on psycopg
    return c.execute(statement).first() is not None


class Evaluator:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._seen: set[tuple[str, str]] = set()

    def run(self, config: AlertConfig, now: datetime, *, conditions: bool = True) -> Evaluated:
        result = Evaluated()
        self._seed(now)
        with self._core.transaction() as session:
            chains = list(session.execute(select(_CURSORS.c.chain).order_by(_CURSORS.c.chain))
                          .scalars())
        for chain in chains:
            for _ in range(MAX_BATCHES):
                done = self._batch(config, chain, now, result)
                if done < BATCH:
                    break
        if conditions:
            self._conditions(config, now, result)
        return result

    # -- seeding -------------------------------------------------------------------------
    def _seed(self, now: datetime) -> None:
        with self._core.transaction() as session:
            c = session.connection()
            heads = dict(c.execute(select(AuditHead.chain, AuditHead.seq)).all())
            known = set(c.execute(select(_CURSORS.c.chain)).scalars())
            missing = [chain for chain in heads if chain not in known]
            if not missing:
                return
            if not known:  # the first pass on this vault: the past raises nothing
                self._seed_history(c)
            for chain in missing:
                insert_ignoring(c, _CURSORS, {"chain": chain, "seq": heads[chain],
                                              "updated_at": now}, ["chain"])

    def _seed_history(self, c: Connection) -> None:
        allowed = (_AUDIT.c.action.in_(rules.DELIVERING), _AUDIT.c.outcome ==
                   Outcome.ALLOWED.value, _AUDIT.c.path != "")
        dag = dag_of(_AUDIT.c.context)
        by_context = select(dag.label("dag"), _AUDIT.c.path, func.min(_AUDIT.c.ts)).where(
            *allowed, dag.is_not(None)).group_by(dag, _AUDIT.c.path)
        by_principal = select(_AUDIT.c.principal, _AUDIT.c.path, func.min(_AUDIT.c.ts)).where(
            *allowed, _AUDIT.c.principal.like("dag:%")).group_by(_AUDIT.c.principal,
                                                                  _AUDIT.c.path)
        pairs: dict[tuple[str, str], str] = {}
        for name, path, ts in c.execute(by_context):
            pairs.setdefault((name, path), ts)
        for name, path, ts in c.execute(by_principal):
            pairs.setdefault((name[4:], path), ts)
        for (name, path), ts in pairs.items():
            if name and len(name) <= 250:
                insert_ignoring(c, _SEEN, {"dag_id": name, "path": path, "first_ts": ts},
                                ["dag_id", "path"])

    # -- records -------------------------------------------------------------------------
    def _batch(self, config: AlertConfig, chain: int, now: datetime, result: Evaluated) -> int:
        with self._core.transaction() as session:
            c = session.connection()
            cursor = c.execute(select(_CURSORS.c.seq).where(_CURSORS.c.chain == chain)
                               .with_for_update(skip_locked=True)).scalar_one_or_none()
            if cursor is None:
                result.skipped_chains += 1
                return 0
            records = c.execute(select(_AUDIT).where(_AUDIT.c.chain == chain,
                                                     _AUDIT.c.seq > cursor)
                                .order_by(_AUDIT.c.seq).limit(BATCH)).all()
            if not records:
                return 0

            def is_new(dag: str, path: str, ts: str) -> bool:
                if (dag, path) in self._seen:
                    return False
                if len(self._seen) >= MAX_SEEN_CACHE:
                    self._seen.clear()
                self._seen.add((dag, path))
                return len(dag) <= 250 and insert_ignoring(
                    c, _SEEN, {"dag_id": dag, "path": path, "first_ts": ts},
                    ["dag_id", "path"])

            checker = rules.RecordRules(config, c, is_new)
            try:
                for record in records:
                    for finding in checker.findings(record):
                        result.raised += self._raise(c, finding, now)
                c.execute(update(_CURSORS).where(_CURSORS.c.chain == chain).values(
                    seq=records[-1].seq, updated_at=now))
            except BaseException:
                self._seen.clear()  # pairs added in a transaction that rolls back
                raise
            result.records += len(records)
            return len(records)

    @staticmethod
    def _raise(c: Connection, finding: rules.Finding, now: datetime) -> int:
        return int(insert_ignoring(c, _ALERTS, {
            "key": finding.key, "rule": finding.rule, "severity": finding.severity,
            "raised_at": now, "event_ts": finding.event_ts,
            "principal": (finding.principal or "")[:256], "path": (finding.path or "")[:256],
            "chain": finding.chain, "seq": finding.seq, "request_id": finding.request_id,
            "summary": finding.summary[:1000],
            "details": json.dumps(finding.details, sort_keys=True, separators=(",", ":"),
                                  ensure_ascii=False),
            "delivered_to": "", "attempts": 0}, ["key"]))

    # -- conditions ----------------------------------------------------------------------
    def _conditions(self, config: AlertConfig, now: datetime, result: Evaluated) -> None:
        core = self._core
        found: list[rules.Finding | None] = []
        with core.transaction() as session:
            c = session.connection()
            vault_id = core.vault_id(session)
            created = session.execute(select(Vault.created_at)).scalar_one()
            found.append(rules.audit_overdue(config, c, created, now))
            found.append(rules.rewrap_pending(config, c, now))
            heads = c.execute(select(AuditHead.chain, AuditHead.seq)).all()
        stale = config.rule("mark_stale")
        if stale is not None or config.rule("audit_failed") is not None:
            for chain, seq in heads:
                found.append(self._mark(config, vault_id, chain, seq, now))
        with core.transaction() as session:
            c = session.connection()
            for finding in found:
                if finding is not None:
                    result.raised += self._raise(c, finding, now)

    def _mark(self, config: AlertConfig, vault_id: str, chain: int, head_seq: int,
              now: datetime) -> rules.Finding | None:
        """A chain whose records have been beyond the HSM's mark for longer than
        ``mark_stale.after``: the evaluator moves the mark itself (it holds the vault),
        and raises an alert only if it cannot: ``audit_failed`` if the trail fails the
        check on the way (a rollback, a change), ``mark_stale`` otherwise."""
        core = self._core
        after = (config.rule("mark_stale") or config.rules["mark_stale"]).after
        mark = hsm_mark.read(core.keys, vault_id, chain)
        if mark is not None and mark.seq >= head_seq:
            return None
        with core.transaction() as session:
            oldest = rules.unmarked_since(session.connection(), chain,
                                          mark.seq if mark is not None else 0)
        moment = rules.parse_ts(oldest)
        if oldest is None or moment is None or now - moment <= after:
            return None
        try:
            core.marks.advance(chain)
            return None
        except AuditChainBroken as exc:
            return rules.integrity_finding(config, chain, str(exc), now)
        except MLSecretsError as exc:
            log.warning("mlsecrets alerts: could not move the HSM mark of chain %d (%s)",
                        chain, type(exc).__name__)
            return rules.mark_stale(config, chain, oldest, mark.at if mark else None,
                                    f"{type(exc).__name__}: {exc}", now)
