"""The initial schema: vault identity, keys, secrets and versions, principals and grants,
and the append-only audit trail with triggers that refuse changes to it.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_provider_mlsecrets.store.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_REFUSE = "mlsecrets_audit is append-only"


def upgrade() -> None:
    op.create_table(
        "mlsecrets_vault",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("vault_id", sa.String(36), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "mlsecrets_keks",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("label", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "mlsecrets_secrets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("path", sa.String(256), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("rotation", sa.Text, nullable=True),
        sa.Column("latest_version", sa.Integer, nullable=False),
        sa.Column("current_version", sa.Integer, nullable=True),
        sa.Column("max_versions", sa.Integer, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("deleted_at", UTCDateTime, nullable=True),
        sa.Column("mac", sa.LargeBinary, nullable=True),
    )
    op.create_table(
        "mlsecrets_secret_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("secret_id", sa.Integer, sa.ForeignKey("mlsecrets_secrets.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("format_version", sa.Integer, nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=True),
        sa.Column("nonce", sa.LargeBinary, nullable=True),
        sa.Column("ciphertext", sa.LargeBinary, nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("destroyed_at", UTCDateTime, nullable=True),
        sa.UniqueConstraint("secret_id", "version"),
    )
    op.create_index("ix_mlsecrets_secret_versions_kek", "mlsecrets_secret_versions", ["kek_id"])
    op.create_table(
        "mlsecrets_principals",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("revoked_at", UTCDateTime, nullable=True),
        sa.Column("mac", sa.LargeBinary, nullable=True),
    )
    op.create_table(
        "mlsecrets_grants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("principal_id", sa.Integer, sa.ForeignKey("mlsecrets_principals.id"),
                  nullable=False),
        sa.Column("pattern", sa.String(256), nullable=False),
        sa.Column("effect", sa.String(8), nullable=False),
        sa.Column("capabilities", sa.String(256), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("principal_id", "pattern", "effect"),
    )
    op.create_table(
        "mlsecrets_audit_head",
        sa.Column("chain", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "mlsecrets_audit",
        sa.Column("chain", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.String(32), nullable=False),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("roles", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("path", sa.String(256), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("context", sa.Text, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sa.Column("seal", sa.LargeBinary, nullable=True),
    )
    for column in ("ts", "principal", "path"):
        op.create_index(f"ix_mlsecrets_audit_{column}", "mlsecrets_audit", [column])
    _append_only_triggers()


def _append_only_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER mlsecrets_audit_no_{event.lower()} BEFORE {event} "
                f"ON mlsecrets_audit BEGIN SELECT RAISE(ABORT, '{_REFUSE}'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION mlsecrets_audit_refuse() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_REFUSE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER mlsecrets_audit_no_change BEFORE UPDATE OR DELETE ON mlsecrets_audit "
            "FOR EACH ROW EXECUTE FUNCTION mlsecrets_audit_refuse()"
        )
        op.execute(
            "CREATE TRIGGER mlsecrets_audit_no_truncate BEFORE TRUNCATE ON mlsecrets_audit "
            "FOR EACH STATEMENT EXECUTE FUNCTION mlsecrets_audit_refuse()"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS mlsecrets_audit_no_truncate ON mlsecrets_audit")
        op.execute("DROP TRIGGER IF EXISTS mlsecrets_audit_no_change ON mlsecrets_audit")
        op.execute("DROP FUNCTION IF EXISTS mlsecrets_audit_refuse()")
    for table in ("mlsecrets_audit", "mlsecrets_audit_head", "mlsecrets_grants",
                  "mlsecrets_principals", "mlsecrets_secret_versions", "mlsecrets_secrets",
                  "mlsecrets_keks", "mlsecrets_vault"):
        op.drop_table(table)
