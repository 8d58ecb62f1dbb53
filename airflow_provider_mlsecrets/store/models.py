"""The tables, as SQLAlchemy 2 typed models. Every name starts with ``mlsecrets_`` so the
store can share a database with Airflow's metadata. The schema itself is created only by
the Alembic migrations under ``migrations/``; these models must match them (a test checks).
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite drops the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; give a timezone")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


class Base(DeclarativeBase):
    pass


class VersionState(str, enum.Enum):
    PENDING = "pending"
    CURRENT = "current"
    PREVIOUS = "previous"
    RETIRED = "retired"
    DESTROYED = "destroyed"


class KeyState(str, enum.Enum):
    CURRENT = "current"
    RETIRED = "retired"
    DISABLED = "disabled"


class Vault(Base):
    """One row: the vault's identity, bound into every envelope and the audit genesis."""

    __tablename__ = "mlsecrets_vault"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vault_id: Mapped[str] = mapped_column(String(36), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Kek(Base):
    """A key-encryption key version; the key itself never leaves the HSM."""

    __tablename__ = "mlsecrets_keks"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Secret(Base):
    __tablename__ = "mlsecrets_secrets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(256), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(128), default="")
    tags: Mapped[str] = mapped_column(Text, default="{}")
    rotation: Mapped[str | None] = mapped_column(Text, nullable=True)
    latest_version: Mapped[int] = mapped_column(Integer, default=0)
    current_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_versions: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # how many times the vault has sealed this row, under its MAC and named in the audit
    # record of each change, so that an older copy put back is behind the trail
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    versions: Mapped[list[SecretVersion]] = relationship(
        back_populates="secret", order_by="SecretVersion.version"
    )


class SecretVersion(Base):
    """One sealed value. Destroying it clears the three crypto columns, keeping the row."""

    __tablename__ = "mlsecrets_secret_versions"
    __table_args__ = (UniqueConstraint("secret_id", "version"),
                      Index("ix_mlsecrets_secret_versions_kek", "kek_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_id: Mapped[int] = mapped_column(ForeignKey("mlsecrets_secrets.id"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    format_version: Mapped[int] = mapped_column(Integer)
    kek_id: Mapped[str] = mapped_column(String(64))
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    nonce: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    invalidated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    secret: Mapped[Secret] = relationship(back_populates="versions")


class RotationStep(str, enum.Enum):
    """Where a rotation stands: the last step that completed (``idle``: none running)."""

    IDLE = "idle"
    CREATED = "created"
    SET = "set"
    TESTED = "tested"
    CANCELLING = "cancelling"  # a cancel began to undo the service side; resumed, not finished


class Rotation(Base):
    """The rotation state of one secret. ``owner`` and ``lease_until`` let one run at a time
    hold it (taken by check-and-set); the step and pending version let the next run resume."""

    __tablename__ = "mlsecrets_rotations"
    __table_args__ = (Index("ix_mlsecrets_rotations_due", "next_due_at"),)
    secret_id: Mapped[int] = mapped_column(ForeignKey("mlsecrets_secrets.id"), primary_key=True,
                                           autoincrement=False)
    next_due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    step: Mapped[str] = mapped_column(String(16))
    pending_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(36), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    previous_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    invalidate_after: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_result: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    rotations: Mapped[int] = mapped_column(Integer, default=0)


class Principal(Base):
    """A person or pipeline. Only the HSM-keyed hash of its token is stored."""

    __tablename__ = "mlsecrets_principals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # how many times the vault has sealed this row, under its MAC and named in the audit
    # record of each change, so that an older copy put back is behind the trail
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    grants: Mapped[list[Grant]] = relationship(back_populates="principal", order_by="Grant.id")


class Grant(Base):
    """Capabilities on a path pattern, allowed or explicitly denied."""

    __tablename__ = "mlsecrets_grants"
    __table_args__ = (UniqueConstraint("principal_id", "pattern", "effect"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    principal_id: Mapped[int] = mapped_column(ForeignKey("mlsecrets_principals.id"))
    pattern: Mapped[str] = mapped_column(String(256))
    effect: Mapped[str] = mapped_column(String(8))
    capabilities: Mapped[str] = mapped_column(String(256))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    principal: Mapped[Principal] = relationship(back_populates="grants")


class VaultPolicy(Base):
    """A vault-wide policy that decides access, one HSM-MACed row per name. ``critical``: the
    path patterns whose plaintext reads need a second security engineer's approval. The row
    is written by ``init`` so that deleting it is tampering, not "no policy"."""

    __tablename__ = "mlsecrets_policy"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)  # canonical JSON
    changed_by: Mapped[str] = mapped_column(String(128))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # how many times the vault has sealed this row, under its MAC and named in the audit
    # record of each change, so that an older copy put back is behind the trail
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class AccessRequest(Base):
    """A break-glass request: one principal asks to read one critical path for a bounded
    window; another security engineer approves or denies it. HSM-MACed over every field."""

    __tablename__ = "mlsecrets_access_requests"
    __table_args__ = (Index("ix_mlsecrets_access_requests_lookup", "principal", "path",
                            "state"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(256))
    justification: Mapped[str] = mapped_column(String(500))
    window_seconds: Mapped[int] = mapped_column(Integer)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16))  # pending, approved, denied
    decided_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    mac: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # how many times the vault has sealed this row, under its MAC and named in the audit
    # record of each change, so that an older copy put back is behind the trail
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class AuditHead(Base):
    """The newest record of each chain; locked while a record is appended."""

    __tablename__ = "mlsecrets_audit_head"
    chain: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[bytes] = mapped_column(LargeBinary)


class AuditAnchor(Base):
    """Where a pruned chain now starts: the last pruned record's seq and hash, the prune
    that cut there, and an HSM seal over all of it (:mod:`..audit.anchor`). Append-only (an
    anchor older than anchor seals is resealed once); a record may be deleted only at or
    below its chain's anchor."""

    __tablename__ = "mlsecrets_audit_anchors"
    chain: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary)
    seal: Mapped[bytes] = mapped_column(LargeBinary)
    pruned_at: Mapped[str] = mapped_column(String(32))
    # the audit.prune operation's request id; NULL only on anchors older than migration 0005
    prune_request: Mapped[str | None] = mapped_column(String(36), nullable=True)


# -- two derived columns of the audit trail, indexed by expression (migration 0006) ----------
class decision_of(FunctionElement[str]):
    """The decision that opened a record's reason: the text before its first ``;``
    (``grant of inject on ml/**``). Compiled per database exactly as migration 0006 indexes
    it, so the index serves queries."""

    type = String()
    inherit_cache = True
    name = "mlsecrets_decision"


class dag_of(FunctionElement[str]):
    """The verified ``dag_id`` in a record's context (canonical JSON: ``"dag_id":"…"``), read
    with string functions only, so no stored context, however malformed, can fail a query
    or an insert; NULL if there is none. Compiled as migration 0006 indexes it."""

    type = String()
    inherit_cache = True
    name = "mlsecrets_dag"


DAG_KEY = '"dag_id":"'


def decision_sql(column: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"split_part({column}, ';', 1)"
    return f"substr({column}, 1, instr({column} || ';', ';') - 1)"


def dag_sql(column: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"substring({column}, '\"dag_id\":\"([^\"]*)\"')"
    at = f"instr({column}, '{DAG_KEY}')"
    rest = f"substr({column}, {at} + {len(DAG_KEY)})"
    return f"CASE WHEN {at} > 0 THEN substr({rest}, 1, instr({rest}, '\"') - 1) END"


@compiles(decision_of)
def _decision(element: decision_of, compiler: SQLCompiler, **kw: Any) -> str:
    return decision_sql(compiler.process(element.clauses, **kw), compiler.dialect.name)


@compiles(dag_of)
def _dag(element: dag_of, compiler: SQLCompiler, **kw: Any) -> str:
    return dag_sql(compiler.process(element.clauses, **kw), compiler.dialect.name)


class AuditRecord(Base):
    """Append-only; triggers refuse UPDATE, DELETE (except at or below an anchor: retention)
    and TRUNCATE on PostgreSQL."""

    __tablename__ = "mlsecrets_audit"
    # the console's and reviews' reads (migration 0006, which also indexes two derived
    # columns by expression: the decision in ``reason`` and the ``dag_id`` in ``context``)
    __table_args__ = (
        Index("ix_mlsecrets_audit_time", "ts", "chain", "seq"),
        Index("ix_mlsecrets_audit_principal_time", "principal", "ts", "chain", "seq"),
        Index("ix_mlsecrets_audit_path_time", "path", "ts", "chain", "seq"),
        Index("ix_mlsecrets_audit_outcome_time", "outcome", "ts", "chain", "seq"),
        Index("ix_mlsecrets_audit_action", "action", "path", "ts"),
    )
    chain: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(32))
    principal: Mapped[str] = mapped_column(String(128))
    roles: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(256))
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(String(36))
    context: Mapped[str] = mapped_column(Text)
    hash: Mapped[bytes] = mapped_column(LargeBinary)
    seal: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


_HAS_DAG = dag_of(AuditRecord.context).is_not(None)
Index("ix_mlsecrets_audit_grant_use", AuditRecord.principal, AuditRecord.outcome,
      decision_of(AuditRecord.reason), AuditRecord.ts)
Index("ix_mlsecrets_audit_dag", dag_of(AuditRecord.context), AuditRecord.ts, AuditRecord.chain,
      AuditRecord.seq, sqlite_where=_HAS_DAG, postgresql_where=_HAS_DAG)


# -- alerts (migration 0008; service/alerts.py) ----------------------------------------------
class AlertCursor(Base):
    """How far the alert evaluators have read each audit chain: the last ``seq`` evaluated.
    Moved in the transaction that writes the alerts those records raised."""

    __tablename__ = "mlsecrets_alert_cursor"
    chain: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AlertSeen(Base):
    """Each (DAG, path) the vault has delivered a value to: the history of the "a DAG
    reaches a secret it has never used before" rule, seeded from the past trail once."""

    __tablename__ = "mlsecrets_alert_seen"
    dag_id: Mapped[str] = mapped_column(String(250), primary_key=True)
    path: Mapped[str] = mapped_column(String(256), primary_key=True)
    first_ts: Mapped[str] = mapped_column(String(32))


class Alert(Base):
    """One alert, raised once: ``key`` is unique (the rule and the record's chain and seq, a
    burst's subject and window, or a condition and its day), so a second evaluator's insert
    of the same alert fails instead of raising it twice. Never holds a value: who, what,
    when, where, and which audit record."""

    __tablename__ = "mlsecrets_alerts"
    __table_args__ = (Index("ix_mlsecrets_alerts_open", "acked_at", "id"),
                      Index("ix_mlsecrets_alerts_undelivered", "delivered_at", "next_attempt_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    rule: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    event_ts: Mapped[str] = mapped_column(String(32))
    principal: Mapped[str] = mapped_column(String(256))
    path: Mapped[str] = mapped_column(String(256))
    chain: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    summary: Mapped[str] = mapped_column(Text)
    details: Mapped[str] = mapped_column(Text)  # canonical JSON of the rule's findings
    delivered_to: Mapped[str] = mapped_column(Text, default="")  # notifier names, one a line
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    acked_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
