"""Alembic environment: runs against the engine the caller passes in."""

from __future__ import annotations

from alembic import context

from airflow_provider_mlsecrets.store.migrate import VERSION_TABLE
from airflow_provider_mlsecrets.store.models import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
