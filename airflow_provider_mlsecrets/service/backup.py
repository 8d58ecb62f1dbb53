"""Backup and restore: a consistent snapshot of every vault table as JSON lines, sealed in
the HSM (docs/reliability.md, "Backup and restore").

The file holds what the database holds (ciphertexts, wrapped data keys, token hashes, the
policy and the audit trail) and never a plaintext or a key: without the same HSM it opens
nothing. Its last line carries SHA-256 over every line before it and an HMAC of that digest
under the integrity key, computed in the HSM, so a restore refuses a file that was changed,
cut short or made by another HSM before it writes a single row.

Line 1: ``{"format", "vault_id", "schema", "created_at", "columns": {table: [names]}}``;
then one ``{"t": table, "r": [values]}`` per row, tables in foreign-key order, bytes as
base64 and times as ISO 8601; last: ``{"rows", "sha256", "mac"}``.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Connection, Integer, LargeBinary, Table, func, insert, inspect, select

from airflow_provider_mlsecrets import canonical
from airflow_provider_mlsecrets.audit import log as audit_log
from airflow_provider_mlsecrets.audit import mark as hsm_mark
from airflow_provider_mlsecrets.audit.record import Entry, Outcome, format_ts
from airflow_provider_mlsecrets.audit.verify import verify
from airflow_provider_mlsecrets.errors import ConfigurationError, IntegrityError, InvalidInput
from airflow_provider_mlsecrets.keys import MacKey
from airflow_provider_mlsecrets.policy.roles import Capability
from airflow_provider_mlsecrets.service._core import Caller, Core, process_context, utcnow
from airflow_provider_mlsecrets.store import models
from airflow_provider_mlsecrets.store.engine import safe_url
from airflow_provider_mlsecrets.store.models import UTCDateTime

FORMAT = "mlsecrets-backup-v1"
_TAG = "mlsecrets-backup-v1"
_BATCH = 1000


@dataclass(frozen=True)
class BackupInfo:
    vault_id: str
    schema: str
    rows: dict[str, int]


@dataclass(frozen=True)
class RestoreInfo:
    vault_id: str
    rows: dict[str, int]
    audit_records: int
    audit_ok: bool


def _tables() -> list[Table]:
    return [t for t in models.Base.metadata.sorted_tables if t.name.startswith("mlsecrets_")]


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _decoder(table: Table) -> list[Any]:
    out: list[Any] = []
    for column in table.columns:
        if isinstance(column.type, LargeBinary):
            out.append(lambda v: None if v is None else base64.b64decode(v, validate=True))
        elif isinstance(column.type, UTCDateTime):
            out.append(lambda v: None if v is None else datetime.fromisoformat(v))
        else:
            out.append(lambda v: v)
    return out


def _seal(core: Core, rows: int, digest: bytes) -> bytes:
    return core.keys.mac(MacKey.INTEGRITY, canonical.encode(_TAG, rows, digest))


class BackupService:
    def __init__(self, core: Core) -> None:
        self._core = core

    def backup(self, caller: Caller, out: TextIO) -> BackupInfo:
        """Write a snapshot of the vault to ``out``. Needs what ``grant`` needs (an unfenced
        security engineer): the file holds the whole policy. Nothing reaches ``out`` until
        the backup's own audit record is committed."""
        from airflow_provider_mlsecrets.store import migrate

        with tempfile.TemporaryFile("w+", encoding="utf-8") as buffer:  # unlinked, private
            with self._core.operation(caller, "vault.backup", Capability.GRANT) as op:
                vault_id = self._core.vault_id(op.session)
                if self._core.engine.dialect.name == "sqlite":
                    # this transaction's write lock already holds every writer off
                    info = self._dump(op.session.connection(), vault_id, migrate, buffer)
                else:
                    with self._core.engine.connect() as snapshot:
                        snapshot = snapshot.execution_options(
                            isolation_level="REPEATABLE READ")
                        with snapshot.begin():
                            info = self._dump(snapshot, vault_id, migrate, buffer)
                op.reason += f"; {sum(info.rows.values())} rows"
            buffer.seek(0)
            shutil.copyfileobj(buffer, out)
        return info

    def _dump(self, c: Connection, vault_id: str, migrate: Any, out: TextIO) -> BackupInfo:
        digest = hashlib.sha256()
        schema = migrate.current_revision(c)
        tables = _tables()

        def emit(obj: object) -> None:
            line = json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n"
            digest.update(line.encode("utf-8"))
            out.write(line)

        emit({"format": FORMAT, "vault_id": vault_id, "schema": schema,
              "created_at": format_ts(utcnow()),
              "columns": {t.name: [col.name for col in t.columns] for t in tables}})
        counts: dict[str, int] = {}
        for table in tables:
            counts[table.name] = 0
            key = list(table.primary_key.columns)
            for row in c.execute(select(table).order_by(*key)).yield_per(_BATCH):
                emit({"t": table.name, "r": [_encode(v) for v in row]})
                counts[table.name] += 1
        total = sum(counts.values())
        out.write(json.dumps({"rows": total, "sha256": digest.hexdigest(),
                              "mac": _seal(self._core, total, digest.digest()).hex()}) + "\n")
        return BackupInfo(vault_id=vault_id, schema=str(schema), rows=counts)

    def restore(self, source: Path, *, accept_rollback: bool = False) -> RestoreInfo:
        """Load a backup into an empty vault database with the HSM that made it. The file
        is read once, into a private copy that is checked whole (its HSM MAC over every
        line and the row count) and then loaded, so what is loaded is what was checked; the
        load is one transaction, so a failure leaves the database as empty as it was.

        A backup's trail ends before the HSM's high-water marks whenever anything was
        recorded after it was taken (its own ``backup`` record at least): restoring it
        rolls the trail back, which is exactly what an attacker restoring an old backup
        would do. So it is refused unless ``accept_rollback``; then the marks are moved
        back to the restored trail deliberately and the restore's record says from where
        to where, and how many records were lost."""
        from airflow_provider_mlsecrets.store import migrate

        core = self._core
        core.keys.check()
        self._refuse_unless_empty()
        with tempfile.TemporaryFile("w+", encoding="utf-8") as copy:
            header, rows = self._copy_and_check(source, copy)
            with core.database_errors():
                migrate.upgrade(core.engine)
            if header["schema"] != migrate.head_revision():
                raise ConfigurationError(
                    f"the backup has schema {header['schema']} and this release "
                    f"{migrate.head_revision()}; restore it with the release that made it, "
                    "then upgrade")
            with core.transaction() as session:
                c = session.connection()
                copy.seek(0)
                counts = self._load(c, copy, header, rows)
                for label in c.execute(select(models.Kek.label)).scalars():
                    core.keys.describe(label)  # KeyMissing: not the HSM this vault used
                self._reset_sequences(c)
                rollback = self._rollback(c, header["vault_id"], accept_rollback)
                audit_log.append(session, core.keys, Entry(
                    ts=format_ts(utcnow()), principal=f"os:{getpass.getuser()}", roles="",
                    action="vault.restore", path="", version=None,
                    outcome=Outcome.ALLOWED.value,
                    reason=f"restored {rows} rows from a backup of {header['created_at']}"
                           + rollback,
                    request_id=str(uuid.uuid4()),
                    context=json.dumps(process_context("cli"), sort_keys=True,
                                       separators=(",", ":"))), header["vault_id"])
        with core.engine.connect() as c, c.begin():
            report = verify(c, core.keys, header["vault_id"])
        return RestoreInfo(vault_id=header["vault_id"], rows=counts,
                           audit_records=report.records, audit_ok=report.ok)

    def _rollback(self, c: Connection, vault_id: str, accept: bool) -> str:
        """Compare the restored trail with the HSM's marks; refuse a rollback unless
        ``accept``, else move the marks back (before the commit: if it fails, the marks
        only sit behind an empty database) and say what was rolled back."""
        report = verify(c, self._core.keys, vault_id)
        if report.ok:
            return ""
        if not report.rolled_back or len(report.problems) > sum(
                "high-water mark" in p for p in report.problems):
            raise IntegrityError("the backup's audit trail does not verify: "
                                 + "; ".join(report.problems) + " (nothing was restored)")
        if not accept:
            raise IntegrityError(
                "the backup is older than the HSM's high-water mark of the audit trail: "
                "restoring it would roll the trail back and lose every record made since ("
                + "; ".join(report.problems) + "). If that is what you mean (the newer "
                "database is lost), restore again with --accept-rollback; it is recorded")
        moved = []
        for head in c.execute(select(models.AuditHead)).all():
            previous = hsm_mark.read(self._core.keys, vault_id, head.chain)
            if previous is not None and (previous.seq, previous.hash) != (head.seq, head.hash):
                hsm_mark.write(self._core.keys, vault_id, head.chain, head.seq, head.hash,
                               format_ts(utcnow()), previous)
                moved.append(f"chain {head.chain} from record {previous.seq} (marked "
                             f"{previous.at}) back to {head.seq}")
        return "; ROLLBACK accepted: " + ", ".join(moved)

    def _refuse_unless_empty(self) -> None:
        """Before anything is created or migrated: no vault table may hold a row."""
        from airflow_provider_mlsecrets.store.migrate import VERSION_TABLE

        engine = self._core.engine
        with self._core.database_errors(), engine.connect() as c:
            present = set(inspect(c).get_table_names())
            for table in _tables():
                if table.name in present and table.name != VERSION_TABLE and c.execute(
                        select(func.count()).select_from(table)).scalar_one():
                    raise InvalidInput(
                        f"the database at {safe_url(self._core.settings.db_url)} already "
                        f"holds vault data ({table.name}); restore only into an empty "
                        "database (nothing was changed)")

    def _copy_and_check(self, source: Path, copy: TextIO) -> tuple[dict[str, Any], int]:
        """Copy ``source`` into ``copy`` in one read and check the copy: the header, the
        trailer (exactly its three fields) and the HSM MAC over the lines and their
        number. Returns the header and the number of rows."""
        digest = hashlib.sha256()
        lines, last = 0, ""
        try:
            with source.open("rb") as handle:
                for raw in handle:
                    if lines:
                        digest.update(last.encode("utf-8"))
                    last = raw.decode("utf-8")
                    copy.write(last)
                    lines += 1
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read the backup {source}: {exc}") from None
        refused = IntegrityError(
            f"the backup {source} was changed, cut short, or made with another HSM (its seal "
            "does not match); nothing was restored")
        try:
            copy.seek(0)
            header = json.loads(copy.readline())
            trailer = json.loads(last)
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise InvalidInput(f"{source} is not a {FORMAT} file")
            if not isinstance(trailer, dict) or set(trailer) != {"rows", "sha256", "mac"}:
                raise refused
            rows = trailer["rows"]
            if type(rows) is not int or rows != lines - 2 or \
                    trailer["sha256"] != digest.hexdigest():
                raise refused
            if not hmac.compare_digest(_seal(self._core, rows, digest.digest()),
                                       bytes.fromhex(trailer["mac"])):
                raise refused
        except (ValueError, TypeError) as exc:
            if isinstance(exc, InvalidInput):
                raise
            raise refused from None
        return header, rows

    @staticmethod
    def _load(c: Connection, copy: TextIO, header: dict[str, Any],
              rows: int) -> dict[str, int]:
        """Exactly ``rows`` lines of ``{"t", "r"}`` after the header, tables in foreign-key
        order, then the trailer: anything else is refused before the commit."""
        order = _tables()
        tables = {t.name: t for t in order}
        rank = {t.name: i for i, t in enumerate(order)}
        names = {n: [col.name for col in t.columns] for n, t in tables.items()}
        if header.get("columns") != names:
            raise InvalidInput("the backup's tables differ from this release's schema")
        decoders = {n: _decoder(t) for n, t in tables.items()}
        counts = dict.fromkeys(tables, 0)
        pending: list[dict[str, Any]] = []
        current: str | None = None

        def flush() -> None:
            if pending and current is not None:
                c.execute(insert(tables[current]), pending)
                pending.clear()

        malformed = IntegrityError("the backup's rows are not in its own format; nothing "
                                   "was restored")
        copy.readline()  # the header, checked already
        for _ in range(rows):
            try:
                item = json.loads(copy.readline())
                if not isinstance(item, dict) or set(item) != {"t", "r"} or \
                        item["t"] not in tables or not isinstance(item["r"], list) or \
                        (current is not None and rank[item["t"]] < rank[current]):
                    raise malformed
                name = item["t"]
                row = {col: decode(v) for col, decode, v in
                       zip(names[name], decoders[name], item["r"], strict=True)}
            except (ValueError, TypeError):
                raise malformed from None
            if name != current:
                flush()
                current = name
            pending.append(row)
            counts[name] += 1
            if len(pending) >= _BATCH:
                flush()
        flush()
        return counts

    @staticmethod
    def _reset_sequences(c: Connection) -> None:
        """PostgreSQL hands out ids from sequences that an explicit id does not move."""
        if c.dialect.name != "postgresql":
            return
        for table in _tables():
            key = list(table.primary_key.columns)
            if len(key) != 1 or not isinstance(key[0].type, Integer):
                continue
            column = key[0]  # a column without a sequence makes this setval(NULL): nothing
            c.execute(select(func.setval(
                func.pg_get_serial_sequence(table.name, column.name),
                func.greatest(select(func.max(column)).scalar_subquery(), 1))))
