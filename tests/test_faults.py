"""Faults under a running vault: a database connection killed in the middle of a
transaction, the database restarted, a full SQLite database. Each leaves nothing
half-written, gives a clear error, and the same vault object carries on afterwards
without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, event, text

from airflow_provider_mlsecrets.errors import AuditError, MLSecretsError, StoreError
from airflow_provider_mlsecrets.keys.softhsm import DevToken
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.conftest import Env, make_settings, postgres_url
from tests.pg_server import ScramPostgres
from tests.pg_server import own_postgres as own_postgres  # the fixture


def versions_of(env: Env, path: str) -> list[int]:
    with engine_for(env.settings.db_url).connect() as c:
        return list(c.execute(text(
            "SELECT v.version FROM mlsecrets_secret_versions v JOIN mlsecrets_secrets s "
            "ON s.id = v.secret_id WHERE s.path = :p ORDER BY v.version"), {"p": path}).scalars())


def audit_count(env: Env) -> int:
    with engine_for(env.settings.db_url).connect() as c:
        return int(c.execute(text("SELECT count(*) FROM mlsecrets_audit")).scalar_one())


@contextmanager
def kill_backend_at(env: Env, marker: str) -> Iterator[list[str]]:
    """Terminate the vault's PostgreSQL backend the first time it is about to run a
    statement containing ``marker``: the transaction dies half-way."""
    engine = engine_for(env.settings.db_url)
    admin = create_engine(postgres_url())
    killed: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if marker in statement and not killed:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with admin.begin() as c:
                c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            killed.append(statement.split()[0])

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield killed
    finally:
        event.remove(engine, "before_cursor_execute", before)
        admin.dispose()


@pytest.mark.parametrize("marker", ["INSERT INTO mlsecrets_secret_versions",
                                    "INSERT INTO mlsecrets_audit "])
def test_a_connection_killed_mid_write_leaves_no_partial_version(env: Env,
                                                                  marker: str) -> None:
    if env.database.kind != "postgres":
        pytest.skip("pg_terminate_backend: PostgreSQL only")
    env.vault.secrets.put(env.admin, "ml/key", b"v1")
    before = audit_count(env)
    with kill_backend_at(env, marker) as killed, pytest.raises(StoreError) as failure:
        env.vault.secrets.put(env.admin, "ml/key", b"v2")
    assert killed and "nothing was changed" in str(failure.value)
    assert versions_of(env, "ml/key") == [1]  # no partial version
    # the failure itself is recorded on a fresh connection; the chain has no gap
    assert audit_count(env) == before + 1
    assert env.vault.audit.verify(env.admin, all_seals=True).ok
    # the client retries on the same vault object: the pool replaced the dead connection
    env.vault.secrets.put(env.admin, "ml/key", b"v2")
    assert env.vault.secrets.read(env.admin, "ml/key", reason="in a test") == b"v2"
    assert versions_of(env, "ml/key") == [1, 2]


def test_a_connection_killed_mid_lookup_returns_no_value(env: Env) -> None:
    if env.database.kind != "postgres":
        pytest.skip("pg_terminate_backend: PostgreSQL only")
    env.vault.secrets.put(env.admin, "ml/key", b"secret-value")
    with kill_backend_at(env, "INSERT INTO mlsecrets_audit ") as killed, \
            pytest.raises(MLSecretsError) as failure:
        # the value was decrypted, then lost
        env.vault.secrets.read(env.admin, "ml/key", reason="in a test")
    assert killed and "secret-value" not in str(failure.value)
    assert env.vault.secrets.read(env.admin, "ml/key", reason="in a test") == b"secret-value"
    assert env.vault.audit.verify(env.admin).ok


def test_a_full_sqlite_database_fails_writes_cleanly_and_corrupts_nothing(env: Env) -> None:
    if env.database.kind != "sqlite":
        pytest.skip("a size limit on the database file: SQLite")
    env.vault.secrets.put(env.admin, "ml/small", b"small-value")
    engine = engine_for(env.settings.db_url)
    with engine.connect() as c:
        pages = int(c.exec_driver_sql("PRAGMA page_count").scalar_one())

    def cap(dbapi_connection: Any, _record: Any) -> None:  # the disk is full a few pages on
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 8}")

    event.listen(engine, "connect", cap)
    engine.dispose()
    try:
        with pytest.raises(StoreError, match="database or disk is full"):
            env.vault.secrets.put(env.admin, "ml/big", b"x" * 60_000)
        assert versions_of(env, "ml/big") == []
        # lookups go on while their audit records still fit ...
        assert env.vault.secrets.read(env.admin, "ml/small", reason="in a test") == b"small-value"
        # ... and once nothing fits, they fail closed: no record, no value
        outcome: BaseException | None = None
        for _ in range(2000):
            try:
                env.vault.secrets.read(env.admin, "ml/small", reason="in a test")
            except MLSecretsError as exc:
                outcome = exc
                break
        assert isinstance(outcome, (AuditError, StoreError)), outcome
        assert "small-value" not in str(outcome)
    finally:
        event.remove(engine, "connect", cap)
        engine.dispose()
    with engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    # space again: everything works and the trail is whole
    env.vault.secrets.put(env.admin, "ml/big", b"x" * 60_000)
    assert env.vault.secrets.read(env.admin, "ml/small", reason="in a test") == b"small-value"
    assert env.vault.audit.verify(env.admin, all_seals=True).ok


def test_the_vault_carries_on_across_a_database_restart(hsm: DevToken, tmp_path: Path,
                                                        own_postgres: ScramPostgres) -> None:
    url = (f"postgresql+psycopg://{quote(own_postgres.superuser, safe='')}:"
           f"{quote(own_postgres.superuser_password, safe='')}@{own_postgres.host}:"
           f"{own_postgres.port}/{own_postgres.dbname}")
    vault = Vault(make_settings(hsm, tmp_path, url))
    admin = Caller(vault.initialise().admin_token)
    vault.secrets.put(admin, "ml/key", b"before-restart")
    # the pool holds connections
    assert vault.secrets.read(admin, "ml/key", reason="in a test") == b"before-restart"
    own_postgres.restart()  # every pooled connection is now dead
    # no error, no restart
    assert vault.secrets.read(admin, "ml/key", reason="in a test") == b"before-restart"
    vault.secrets.put(admin, "ml/key", b"after-restart")
    assert vault.secrets.read(admin, "ml/key", reason="in a test") == b"after-restart"
    report = vault.audit.verify(admin, all_seals=True)
    assert report.ok and report.records == 6  # init, put, read, read, put, read
    engine_for(url).dispose()
