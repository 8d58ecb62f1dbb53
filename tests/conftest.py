"""Fixtures on real parts: one SoftHSM2 token for the session (``reset_on_fork = true``),
SQLite files and PostgreSQL schemas per test, and a freshly initialised vault."""

from __future__ import annotations

import multiprocessing
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

# Airflow imported in this process must never read or create the machine's ~/airflow: CI's
# next machine has none, and a leftover one must not change what a test sees. Tests that
# start Airflow processes give them their own AIRFLOW_HOME.
if "AIRFLOW_HOME" not in os.environ:
    import tempfile

    os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="mlsecrets-tests-airflow-")

from airflow_provider_mlsecrets.keys.softhsm import DevToken, provision
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.store.engine import engine_for

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOKEN_LABEL = "mlsecrets-test"


def postgres_url() -> str:
    return os.environ.get("MLSECRETS_TEST_DATABASE_URL", DEFAULT_PG)


_pg_state: dict[str, str | None] = {}


def require_postgres() -> str:
    """The PostgreSQL URL, or a skip outside CI; in CI an unreachable server fails loudly."""
    url = postgres_url()
    if "error" not in _pg_state:
        try:
            with create_engine(url).connect() as connection:
                connection.execute(text("SELECT 1"))
            _pg_state["error"] = None
        except Exception as exc:  # any failure to connect means the same thing here
            _pg_state["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    error = _pg_state["error"]
    if error is not None:
        message = f"PostgreSQL at {url} is unreachable ({error})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(message + "; set MLSECRETS_TEST_DATABASE_URL to run these tests")
    return url


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> DevToken:
    return provision(tmp_path_factory.mktemp("hsm"), TOKEN_LABEL)


@dataclass
class Database:
    kind: str
    url: str


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'vault.db'}"
    yield Database("sqlite", url)
    engine_for(url).dispose()


@contextmanager
def empty_postgres() -> Iterator[str]:
    """The URL of a new, empty schema on the test server, dropped afterwards."""
    base = require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{base}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        engine_for(url).dispose()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def postgres_db() -> Iterator[Database]:
    with empty_postgres() as url:
        yield Database("postgres", url)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Database:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_db")  # type: ignore[no-any-return]
    return request.getfixturevalue("sqlite_db")  # type: ignore[no-any-return]


def make_settings(hsm: DevToken, home: Path, db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "home": home, "db_url": db_url, "pkcs11_module": hsm.module,
        "pkcs11_token": TOKEN_LABEL, "pkcs11_pin_file": hsm.pin_file,
        "softhsm2_conf": hsm.conf, "key_prefix": "t" + secrets.token_hex(6),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(hsm: DevToken, tmp_path: Path, database: Database) -> Settings:
    return make_settings(hsm, tmp_path, database.url)


@dataclass
class Env:
    vault: Vault
    admin: Caller
    settings: Settings
    database: Database

    def principal(self, name: str, role: str, *patterns_caps: tuple[str, list[str]]) -> Caller:
        token = self.vault.access.create_principal(self.admin, name, role)
        for pattern, caps in patterns_caps:
            self.vault.access.grant(self.admin, name, pattern, caps)
        return Caller(token, {"component": "test"})


@pytest.fixture
def env(settings: Settings, database: Database) -> Env:
    vault = Vault(settings)
    result = vault.initialise()
    assert result.admin_token is not None
    return Env(vault=vault, admin=Caller(result.admin_token, {"component": "test"}),
               settings=settings, database=database)


def run_forked(work: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``work(*a)`` in one forked child per ``a``; return what each returned, in order.
    A child that raises returns ``"<Type>: message"`` instead, so the test shows why."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def child(index: int, child_args: tuple[Any, ...]) -> None:
        try:
            queue.put((index, work(*child_args)))
        except BaseException as exc:
            queue.put((index, f"{type(exc).__name__}: {exc}"))

    children = [context.Process(target=child, args=(i, a)) for i, a in enumerate(args)]
    for process in children:
        process.start()
    results = dict(queue.get(timeout=300) for _ in children)
    for process in children:
        process.join(timeout=60)
        assert process.exitcode == 0
    return [results[i] for i in range(len(args))]
