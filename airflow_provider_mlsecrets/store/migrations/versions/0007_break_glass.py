"""Break-glass reads: ``mlsecrets_policy`` (vault-wide policy rows, HSM-MACed; the
``critical`` path patterns) and ``mlsecrets_access_requests`` (a request to read one critical
path, its approval or denial by another security engineer, and the read window).

The migration cannot reach the HSM, so it writes no policy row: ``mlsecrets init`` writes
the empty ``critical`` policy with its MAC, and until it has, plaintext reads are refused
with a message saying to run it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_provider_mlsecrets.store.models import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mlsecrets_policy",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("changed_by", sa.String(128), nullable=False),
        sa.Column("changed_at", UTCDateTime, nullable=False),
        sa.Column("mac", sa.LargeBinary, nullable=True),
    )
    op.create_table(
        "mlsecrets_access_requests",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("path", sa.String(256), nullable=False),
        sa.Column("justification", sa.String(500), nullable=False),
        sa.Column("window_seconds", sa.Integer, nullable=False),
        sa.Column("requested_at", UTCDateTime, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decided_at", UTCDateTime, nullable=True),
        sa.Column("expires_at", UTCDateTime, nullable=True),
        sa.Column("mac", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_mlsecrets_access_requests_lookup", "mlsecrets_access_requests",
                    ["principal", "path", "state"])


def downgrade() -> None:
    op.drop_index("ix_mlsecrets_access_requests_lookup", "mlsecrets_access_requests")
    op.drop_table("mlsecrets_access_requests")
    op.drop_table("mlsecrets_policy")
