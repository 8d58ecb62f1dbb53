"""Alerts (service/alerts.py, docs/alerts.md): ``mlsecrets_alert_cursor`` (how far the
evaluators have read each audit chain), ``mlsecrets_alert_seen`` (each DAG and secret path a
value was delivered for) and ``mlsecrets_alerts`` (each alert once, by its unique key, with
its delivery state). None of them holds a value; the audit trail stays the record.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_provider_mlsecrets.store.models import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mlsecrets_alert_cursor",
        sa.Column("chain", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "mlsecrets_alert_seen",
        sa.Column("dag_id", sa.String(250), primary_key=True),
        sa.Column("path", sa.String(256), primary_key=True),
        sa.Column("first_ts", sa.String(32), nullable=False),
    )
    op.create_table(
        "mlsecrets_alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("raised_at", UTCDateTime, nullable=False),
        sa.Column("event_ts", sa.String(32), nullable=False),
        sa.Column("principal", sa.String(256), nullable=False),
        sa.Column("path", sa.String(256), nullable=False),
        sa.Column("chain", sa.Integer, nullable=True),
        sa.Column("seq", sa.Integer, nullable=True),
        sa.Column("request_id", sa.String(36), nullable=True),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("delivered_to", sa.Text, nullable=False),
        sa.Column("delivered_at", UTCDateTime, nullable=True),
        sa.Column("claimed_until", UTCDateTime, nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("acked_at", UTCDateTime, nullable=True),
        sa.Column("acked_by", sa.String(256), nullable=True),
    )
    op.create_index("ix_mlsecrets_alerts_open", "mlsecrets_alerts", ["acked_at", "id"])
    op.create_index("ix_mlsecrets_alerts_undelivered", "mlsecrets_alerts",
                    ["delivered_at", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_mlsecrets_alerts_undelivered", "mlsecrets_alerts")
    op.drop_index("ix_mlsecrets_alerts_open", "mlsecrets_alerts")
    op.drop_table("mlsecrets_alerts")
    op.drop_table("mlsecrets_alert_seen")
    op.drop_table("mlsecrets_alert_cursor")
