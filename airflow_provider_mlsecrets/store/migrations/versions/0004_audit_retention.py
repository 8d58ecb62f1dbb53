"""Audit retention: anchors where a pruned chain now starts, and triggers that let a record
be deleted only at or below its chain's anchor (``mlsecrets audit prune``). Anchors
themselves are append-only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_REFUSE = "mlsecrets_audit is append-only"
_ANCHORED = ("EXISTS (SELECT 1 FROM mlsecrets_audit_anchors a "
             "WHERE a.chain = OLD.chain AND a.seq >= OLD.seq)")


def upgrade() -> None:
    op.create_table(
        "mlsecrets_audit_anchors",
        sa.Column("chain", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.Column("seal", sa.LargeBinary, nullable=False),
        sa.Column("pruned_at", sa.String(32), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS mlsecrets_audit_no_delete")
        op.execute(f"CREATE TRIGGER mlsecrets_audit_no_delete BEFORE DELETE ON mlsecrets_audit "
                   f"WHEN NOT {_ANCHORED} BEGIN SELECT RAISE(ABORT, '{_REFUSE}'); END")
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER mlsecrets_audit_anchors_no_{event.lower()} BEFORE "
                       f"{event} ON mlsecrets_audit_anchors BEGIN "
                       f"SELECT RAISE(ABORT, '{_REFUSE}'); END")
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION mlsecrets_audit_refuse_unanchored() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN IF {_ANCHORED} THEN RETURN OLD; END IF; "
            f"RAISE EXCEPTION '{_REFUSE}'; END $$")
        op.execute("DROP TRIGGER mlsecrets_audit_no_change ON mlsecrets_audit")
        op.execute("CREATE TRIGGER mlsecrets_audit_no_update BEFORE UPDATE ON mlsecrets_audit "
                   "FOR EACH ROW EXECUTE FUNCTION mlsecrets_audit_refuse()")
        op.execute("CREATE TRIGGER mlsecrets_audit_no_delete BEFORE DELETE ON mlsecrets_audit "
                   "FOR EACH ROW EXECUTE FUNCTION mlsecrets_audit_refuse_unanchored()")
        op.execute("CREATE TRIGGER mlsecrets_audit_anchors_no_change BEFORE UPDATE OR DELETE "
                   "ON mlsecrets_audit_anchors FOR EACH ROW EXECUTE FUNCTION "
                   "mlsecrets_audit_refuse()")
        op.execute("CREATE TRIGGER mlsecrets_audit_anchors_no_truncate BEFORE TRUNCATE ON "
                   "mlsecrets_audit_anchors FOR EACH STATEMENT EXECUTE FUNCTION "
                   "mlsecrets_audit_refuse()")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS mlsecrets_audit_no_delete ON mlsecrets_audit")
        op.execute("DROP TRIGGER IF EXISTS mlsecrets_audit_no_update ON mlsecrets_audit")
        op.execute("CREATE TRIGGER mlsecrets_audit_no_change BEFORE UPDATE OR DELETE ON "
                   "mlsecrets_audit FOR EACH ROW EXECUTE FUNCTION mlsecrets_audit_refuse()")
        op.execute("DROP FUNCTION IF EXISTS mlsecrets_audit_refuse_unanchored()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS mlsecrets_audit_no_delete")
        op.execute(f"CREATE TRIGGER mlsecrets_audit_no_delete BEFORE DELETE ON mlsecrets_audit "
                   f"BEGIN SELECT RAISE(ABORT, '{_REFUSE}'); END")
    op.drop_table("mlsecrets_audit_anchors")
