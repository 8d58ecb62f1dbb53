"""The schema: migrations and models agree, our own version table, and the provider's
metadata as Airflow itself reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.migrate import VERSION_TABLE, current_revision, upgrade
from airflow_provider_mlsecrets.store.models import Base
from tests.conftest import Database


def test_migrations_build_exactly_the_models(database: Database) -> None:
    engine = engine_for(database.url)
    assert upgrade(engine) is True
    assert upgrade(engine) is False  # idempotent
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        diff = [d for d in compare_metadata(context, Base.metadata)
                if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)]
    assert diff == []
    tables = set(inspect(engine).get_table_names())
    assert VERSION_TABLE in tables and "alembic_version" not in tables
    assert all(t.startswith("mlsecrets_") for t in tables)
    assert current_revision(engine) == "0009"


def test_airflow_lists_the_provider(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run([sys.executable, "-m", "airflow", "providers", "list", "-o", "json"],
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"airflow-provider-mlsecrets"' in result.stdout


def test_importing_the_package_touches_nothing(tmp_path: Path) -> None:
    code = ("import sys, airflow_provider_mlsecrets, airflow_provider_mlsecrets.service; "
            "print('pkcs11._pkcs11' in sys.modules, 'airflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["False", "False"]  # no HSM library loaded, Airflow not imported
