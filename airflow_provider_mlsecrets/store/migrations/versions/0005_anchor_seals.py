"""Anchors sealed as anchors: each names the ``audit.prune`` operation that made it
(``prune_request``) and carries an HSM seal over its own domain-separated encoding, so no
record seal can stand in for one (audit/anchor.py).

An anchor written before this revision has a record's seal and no prune request. The
migration cannot reach the HSM, so it only makes room: it lets such an anchor be updated
once, and ``mlsecrets init`` then reseals it if a sealed ``audit.prune`` record whose hash
recomputes from its predecessor names it (service/vault.py). Until then verification
refuses it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_REFUSE = "mlsecrets_audit is append-only"


def upgrade() -> None:
    op.add_column("mlsecrets_audit_anchors",
                  sa.Column("prune_request", sa.String(36), nullable=True))
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS mlsecrets_audit_anchors_no_update")
        op.execute("CREATE TRIGGER mlsecrets_audit_anchors_no_update BEFORE UPDATE ON "
                   "mlsecrets_audit_anchors WHEN OLD.prune_request IS NOT NULL BEGIN "
                   f"SELECT RAISE(ABORT, '{_REFUSE}'); END")
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION mlsecrets_audit_anchor_reseal_once() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN IF OLD.prune_request IS NULL THEN RETURN NEW; "
            f"END IF; RAISE EXCEPTION '{_REFUSE}'; END $$")
        op.execute("DROP TRIGGER mlsecrets_audit_anchors_no_change ON mlsecrets_audit_anchors")
        op.execute("CREATE TRIGGER mlsecrets_audit_anchors_no_delete BEFORE DELETE ON "
                   "mlsecrets_audit_anchors FOR EACH ROW EXECUTE FUNCTION "
                   "mlsecrets_audit_refuse()")
        op.execute("CREATE TRIGGER mlsecrets_audit_anchors_no_update BEFORE UPDATE ON "
                   "mlsecrets_audit_anchors FOR EACH ROW EXECUTE FUNCTION "
                   "mlsecrets_audit_anchor_reseal_once()")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS mlsecrets_audit_anchors_no_update")
        op.execute("CREATE TRIGGER mlsecrets_audit_anchors_no_update BEFORE UPDATE ON "
                   f"mlsecrets_audit_anchors BEGIN SELECT RAISE(ABORT, '{_REFUSE}'); END")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER mlsecrets_audit_anchors_no_update ON mlsecrets_audit_anchors")
        op.execute("DROP TRIGGER mlsecrets_audit_anchors_no_delete ON mlsecrets_audit_anchors")
        op.execute("DROP FUNCTION mlsecrets_audit_anchor_reseal_once()")
        op.execute("CREATE TRIGGER mlsecrets_audit_anchors_no_change BEFORE UPDATE OR DELETE "
                   "ON mlsecrets_audit_anchors FOR EACH ROW EXECUTE FUNCTION "
                   "mlsecrets_audit_refuse()")
    # SQLite drops a column in place (3.35+); a batch copy would trip the record table's
    # delete trigger, which names this table
    op.execute("ALTER TABLE mlsecrets_audit_anchors DROP COLUMN prune_request")
