"""Vault set-up shared by the benchmark scripts: a SoftHSM2 token and an initialised vault,
a large valid audit trail written in bulk, and a throwaway PostgreSQL database."""

from __future__ import annotations

import atexit
import contextlib
import json
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

from sqlalchemy import Table, insert, select, text

from airflow_provider_mlsecrets.audit.log import DEFAULT_CHAIN
from airflow_provider_mlsecrets.audit.record import (
    Entry,
    Outcome,
    canonical_context,
    format_ts,
    next_hash,
)
from airflow_provider_mlsecrets.keys import MacKey
from airflow_provider_mlsecrets.keys.softhsm import provision
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.models import AuditHead, AuditRecord

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass
class Bench:
    vault: Vault
    admin: Caller
    settings: Settings


def scratch(prefix: str) -> Path:
    """A temporary directory, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_settings(home: Path, db_url: str | None = None, label: str = "bench",
                  key_prefix: str = "mlsecrets") -> Settings:
    """Settings for a SoftHSM2 token labelled ``label`` under ``home`` (created once). One
    process can use one token directory only (SoftHSM2 reads its configuration once), so
    several vaults in one process share the token and differ in ``key_prefix``."""
    dev = provision(home, label)
    return Settings(home=home, db_url=db_url or f"sqlite:///{home / 'vault.db'}",
                    pkcs11_module=dev.module, pkcs11_token=label, key_prefix=key_prefix,
                    pkcs11_pin_file=dev.pin_file, softhsm2_conf=dev.conf)


def new_vault(home: Path, db_url: str | None = None, label: str = "bench",
              key_prefix: str = "mlsecrets") -> Bench:
    """A token under ``home`` and a new vault on ``db_url`` (default SQLite in ``home``)."""
    settings = make_settings(home, db_url, label, key_prefix)
    vault = Vault(settings)
    token = vault.initialise().admin_token
    assert token is not None
    return Bench(vault=vault, admin=Caller(token), settings=settings)


def _context(run: int) -> str:
    """A task's audit context, as the secrets backend writes it (one per task run)."""
    return canonical_context({
        "component": "task", "dag_id": f"train_model_{run % 7}", "host": "worker-1",
        "map_index": -1, "pid": 20_000 + run % 30_000,
        "run_id": f"scheduled__2026-01-{1 + run % 28:02d}T{run % 24:02d}:00:00+00:00",
        "task_id": "fetch_features", "try_number": 1})


def fill_audit(vault: Vault, records: int, *, seal_all: bool = False,
               batch: int = 20_000) -> None:
    """Append ``records`` lookup records (20 per task run, over 100 connections) to chain 1
    in one transaction with executemany. The chain is computed as :mod:`audit.log` does;
    only the last record of each batch is sealed in the HSM unless ``seal_all`` (the default
    verification checks only the newest seal)."""
    keys, table = vault.core.keys, cast(Table, AuditRecord.__table__)
    with vault.core.transaction() as session:
        head = session.execute(select(AuditHead).where(AuditHead.chain == DEFAULT_CHAIN)
                               .with_for_update()).scalar_one()
        seq, digest = head.seq, head.hash
        rows: list[dict[str, object]] = []
        connection = session.connection()
        for i in range(records):
            seq += 1
            entry = Entry(ts=format_ts(datetime.now(timezone.utc)), principal="airflow-pipeline",
                          roles="pipeline", action="secret.inject",
                          path=f"connections/warehouse_{i % 100}", version=1 + i % 3,
                          outcome=Outcome.ALLOWED.value,
                          reason="grant inject on connections/**",
                          request_id=str(uuid.uuid4()), context=_context(i // 20))
            digest = next_hash(digest, DEFAULT_CHAIN, seq, entry)
            last = len(rows) == batch - 1 or i == records - 1
            rows.append({**entry.__dict__, "chain": DEFAULT_CHAIN, "seq": seq, "hash": digest,
                         "seal": keys.mac(MacKey.AUDIT, digest) if seal_all or last else None})
            if last:
                connection.execute(insert(table), rows)
                rows = []
        head.seq, head.hash = seq, digest


@contextlib.contextmanager
def pg_database(server: str = PG_SERVER) -> Iterator[str | None]:
    """A fresh PostgreSQL database on ``server``'s cluster, dropped afterwards; ``None`` if
    the server cannot be reached."""
    import psycopg

    conninfo = server.replace("postgresql+psycopg://", "postgresql://")
    name = f"mlsecrets_bench_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(conninfo, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        yield None
        return
    url = server.rsplit("/", 1)[0] + "/" + name
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url
        finally:
            engine_for(url).dispose()  # this process's pooled connections
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_table_bytes(db_url: str, table: str = "mlsecrets_audit") -> int:
    with engine_for(db_url).connect() as connection:
        return int(connection.execute(text("SELECT pg_total_relation_size(:t)"),
                                      {"t": table}).scalar_one())


def vault_with_connection(home: Path, conn_id: str, uri: str) -> tuple[Bench, Path]:
    """A vault under ``home`` holding ``connections/<conn_id>``, a pipeline principal allowed
    to inject ``connections/**``, and its token file; ``home/config.json`` lets
    ``MLSECRETS_HOME=home`` find it all (as ``mlsecrets init --dev`` does)."""
    bench = new_vault(home)
    bench.vault.secrets.put(bench.admin, f"connections/{conn_id}", uri.encode())
    token = bench.vault.access.create_principal(bench.admin, "bench", "pipeline")
    bench.vault.access.grant(bench.admin, "bench", "connections/**", ["inject"])
    token_file = home / "bench.token"
    token_file.write_text(token)
    (home / "config.json").write_text(json.dumps(bench.settings.as_config()))
    return bench, token_file
