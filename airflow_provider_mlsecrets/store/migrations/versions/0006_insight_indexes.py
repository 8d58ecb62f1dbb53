"""Indexes for the security console and access reviews (service/insight.py), so that no
view reads the audit trail beyond what it shows or counts:

- ``(ts, chain, seq)``, ``(principal, ts, chain, seq)``, ``(path, ts, chain, seq)``,
  ``(outcome, ts, chain, seq)``: the timeline, newest first, filtered, paged by key; they
  replace the single-column indexes on ``ts``, ``principal`` and ``path``;
- ``(action, path, ts)``: a secret's rotation history, human reads, the last verification,
  reviews;
- ``(principal, outcome, decision, ts)``: the last use of a grant, where ``decision`` is the
  reason up to its first ``;`` (the vault's decision, ``grant of inject on ml/**``);
- ``(dag, ts, chain, seq)`` over records with a DAG, where ``dag`` is the context's
  ``dag_id``: the timeline of one DAG.

The two derived columns are computed with string functions only (never a JSON parser), so no
stored record, however malformed, can make an insert or a query fail. The expressions must
stay exactly those service/insight.py compiles (``decision_sql``, ``dag_sql``; a test checks
that the queries use these indexes).

On a large trail this migration takes a while (about 10 s per million records here), and on
PostgreSQL it holds writes to the trail until it is done: run it in a quiet moment.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLE = "mlsecrets_audit"
PLAIN = {
    "ix_mlsecrets_audit_time": ["ts", "chain", "seq"],
    "ix_mlsecrets_audit_principal_time": ["principal", "ts", "chain", "seq"],
    "ix_mlsecrets_audit_path_time": ["path", "ts", "chain", "seq"],
    "ix_mlsecrets_audit_outcome_time": ["outcome", "ts", "chain", "seq"],
    "ix_mlsecrets_audit_action": ["action", "path", "ts"],
}
REPLACED = ("ts", "principal", "path")
DECISION = {
    "sqlite": "substr(reason, 1, instr(reason || ';', ';') - 1)",
    "postgresql": "split_part(reason, ';', 1)",
}
DAG = {
    "sqlite": ("CASE WHEN instr(context, '\"dag_id\":\"') > 0 THEN "
               "substr(substr(context, instr(context, '\"dag_id\":\"') + 10), 1, "
               "instr(substr(context, instr(context, '\"dag_id\":\"') + 10), '\"') - 1) END"),
    "postgresql": "substring(context, '\"dag_id\":\"([^\"]*)\"')",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for column in REPLACED:
        op.drop_index(f"ix_mlsecrets_audit_{column}", TABLE)
    for name, columns in PLAIN.items():
        op.create_index(name, TABLE, columns)
    decision, dag = DECISION.get(dialect), DAG.get(dialect)
    if decision is None or dag is None:
        return  # only SQLite and PostgreSQL are supported stores
    op.execute(f"CREATE INDEX ix_mlsecrets_audit_grant_use ON {TABLE} "
               f"(principal, outcome, ({decision}), ts)")
    op.execute(f"CREATE INDEX ix_mlsecrets_audit_dag ON {TABLE} (({dag}), ts, chain, seq) "
               f"WHERE ({dag}) IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_mlsecrets_audit_dag")
    op.execute("DROP INDEX IF EXISTS ix_mlsecrets_audit_grant_use")
    for name in PLAIN:
        op.drop_index(name, TABLE)
    for column in REPLACED:
        op.create_index(f"ix_mlsecrets_audit_{column}", TABLE, [column])
