"""Rotation state: one row per secret under a rotation policy (the policy itself is in
``mlsecrets_secrets.rotation``, under the secret row's integrity MAC), the moment each
version was retired (retention counts from it) and invalidated at its service.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_provider_mlsecrets.store.models import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mlsecrets_rotations",
        sa.Column("secret_id", sa.Integer, sa.ForeignKey("mlsecrets_secrets.id"),
                  primary_key=True, autoincrement=False),
        sa.Column("next_due_at", UTCDateTime, nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("pending_version", sa.Integer, nullable=True),
        sa.Column("owner", sa.String(36), nullable=True),
        sa.Column("lease_until", UTCDateTime, nullable=True),
        sa.Column("previous_version", sa.Integer, nullable=True),
        sa.Column("invalidate_after", UTCDateTime, nullable=True),
        sa.Column("last_started_at", UTCDateTime, nullable=True),
        sa.Column("last_finished_at", UTCDateTime, nullable=True),
        sa.Column("last_result", sa.String(16), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("rotations", sa.Integer, nullable=False),
    )
    op.create_index("ix_mlsecrets_rotations_due", "mlsecrets_rotations", ["next_due_at"])
    with op.batch_alter_table("mlsecrets_secret_versions") as batch:
        batch.add_column(sa.Column("retired_at", UTCDateTime, nullable=True))
        batch.add_column(sa.Column("invalidated_at", UTCDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mlsecrets_secret_versions") as batch:
        batch.drop_column("invalidated_at")
        batch.drop_column("retired_at")
    op.drop_index("ix_mlsecrets_rotations_due", "mlsecrets_rotations")
    op.drop_table("mlsecrets_rotations")
