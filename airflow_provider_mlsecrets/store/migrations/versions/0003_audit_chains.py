"""Four audit chains instead of one: concurrent appends on PostgreSQL take whichever chain
is free (``audit/log.py``), so the trail no longer serialises every vault operation on one
row lock. A vault created before this revision gets the heads of chains 2 to 4, each at its
genesis hash; chain 1 and its records are left as they are.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from airflow_provider_mlsecrets.audit.log import CHAINS
from airflow_provider_mlsecrets.audit.record import genesis

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    vault_id = bind.execute(sa.text("SELECT vault_id FROM mlsecrets_vault")).scalar_one_or_none()
    if vault_id is None:
        return  # a new database: init creates every chain with the vault
    present = set(bind.execute(sa.text("SELECT chain FROM mlsecrets_audit_head")).scalars())
    if not present:
        return  # no chain at all is tampering that verification must keep reporting
    for chain in range(1, CHAINS + 1):
        if chain not in present:
            bind.execute(sa.text("INSERT INTO mlsecrets_audit_head (chain, seq, hash) "
                                 "VALUES (:chain, 0, :hash)"),
                         {"chain": chain, "hash": genesis(vault_id, chain)})


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM mlsecrets_audit_head WHERE chain > 1 AND seq = 0"))
