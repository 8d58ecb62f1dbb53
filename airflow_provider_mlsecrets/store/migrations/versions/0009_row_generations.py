"""Row generations: ``generation`` on the four HSM-MACed kinds of row (principals, secrets,
vault policy, access requests). The vault counts each seal of a row under its MAC and names
the new generation in the audit record of the operation that made it, so ``audit verify``
finds an older copy of a row put back by the database's owner (service/_integrity.py,
audit/freshness.py). Existing rows start at 0 and keep their MAC until next changed.
Downgrading drops the generations, and with them the MACs of every row sealed since: restore
a backup taken before the upgrade instead.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLES = ("mlsecrets_principals", "mlsecrets_secrets", "mlsecrets_policy",
          "mlsecrets_access_requests")


# plain ALTER TABLE on SQLite too (3.35+ drops a column in place): a batch copy of
# mlsecrets_secrets would have to drop a table its versions refer to


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("generation", sa.Integer, nullable=False,
                                       server_default="0"))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "generation")
