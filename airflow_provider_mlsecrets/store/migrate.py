"""Schema migrations (Alembic) under our own version table, never ``alembic_version``,
so the store can live beside Airflow's metadata tables."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

VERSION_TABLE = "mlsecrets_alembic_version"
_SCRIPTS = Path(__file__).with_name("migrations")


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> bool:
    """Bring the schema to the newest revision; return whether anything changed."""
    before = current_revision(engine)
    command.upgrade(_config(engine), "head")
    return current_revision(engine) != before


def current_revision(bind: Engine | Connection) -> str | None:
    """The schema revision, read directly (Alembic's context would log to stdout, which
    under ``airflow mlsecrets`` is where ``--json`` output goes)."""
    if not isinstance(bind, Connection):
        with bind.connect() as connection:
            return current_revision(connection)
    if not inspect(bind).has_table(VERSION_TABLE):
        return None
    row = bind.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")  # noqa: S608 - a constant # nosec B608
                       ).first()
    return None if row is None else str(row[0])


def head_revision() -> str | None:
    return ScriptDirectory(str(_SCRIPTS)).get_current_head()
