"""Issue 15's smaller findings: Airflow's own metadata database on PostgreSQL installs and
migrates from the ``postgres`` extra, and the image is the Airflow the docs describe."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from sqlalchemy import create_engine, inspect, make_url, text

from tests.conftest import require_postgres

ROOT = Path(__file__).resolve().parent.parent


def extra(name: str) -> list[Requirement]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["optional-dependencies"][name]]


def airflow_extra_names() -> set[str]:
    """The extras the installed apache-airflow distribution defines."""
    return set(metadata.metadata("apache-airflow").get_all("Provides-Extra") or [])


@pytest.mark.parametrize("name", ["postgres", "test"])
def test_the_extra_brings_what_airflow_needs_for_its_database_on_postgresql(name: str) -> None:
    """Airflow derives its async engine as postgresql+asyncpg from a postgresql URL, and its
    docs name psycopg2 for the sync one: its own ``postgres`` extra brings both (and the
    postgres provider); psycopg 3 alone is what the vault's store needs, not Airflow."""
    requirements = {r.name: r for r in extra(name)}
    airflow = requirements.get("apache-airflow")
    assert airflow is not None and "postgres" in airflow.extras, sorted(requirements)
    assert "postgres" in airflow_extra_names()  # pip ignores an unknown extra with a warning
    assert airflow.specifier.contains(metadata.version("apache-airflow"))
    assert "psycopg" in requirements  # the vault's own store


@pytest.fixture
def empty_airflow_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (Airflow's metadata wants a database of its own, and
    its async engine cannot take psycopg's search_path option), dropped afterwards."""
    base = make_url(require_postgres())
    name = f"airflow_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_airflow_db_migrate_on_postgresql(empty_airflow_database: str,
                                          tmp_path: Path) -> None:
    """As a new user does after ``pip install '.[postgres]'``: the URL Airflow's docs give
    (postgresql+psycopg2), no async URL of one's own."""
    url = make_url(empty_airflow_database).set(drivername="postgresql+psycopg2")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLSECRETS_"))}
    env.update(AIRFLOW_HOME=str(tmp_path),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=url.render_as_string(hide_password=False))
    got = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert got.returncode == 0, (got.stdout + got.stderr)[-4000:]
    engine = create_engine(empty_airflow_database)
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")
                                         ).scalar_one()
    finally:
        engine.dispose()
    assert {"dag", "dag_run", "task_instance", "connection", "variable"} <= tables
    assert version


def documented_airflow() -> str:
    """The Airflow minor version the docs describe ("Apache Airflow 3.3")."""
    found = re.search(r"Apache Airflow (3\.\d+)", (ROOT / "docs" / "airflow.md").read_text())
    assert found is not None
    return found.group(1)


def test_the_image_is_the_airflow_the_docs_describe() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    found = re.search(r"^ARG AIRFLOW_IMAGE=apache/airflow:(\d+\.\d+)\.\d+-python3\.\d+$",
                      dockerfile, re.MULTILINE)
    assert found is not None, "docker/Dockerfile pins no apache/airflow:X.Y.Z-pythonA.B image"
    assert found.group(1) == documented_airflow()
    assert '"/opt/mlsecrets[postgres]"' in dockerfile
