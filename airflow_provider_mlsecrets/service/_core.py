"""What every vault operation goes through: authenticate, authorise, act, audit.

:meth:`Core.operation` is the one place that decides and records. The action and its
``allowed`` audit record share one transaction, so if the record cannot be written the
action is rolled back and its result (a plaintext, a new version) is never returned.
Denials, misses and errors are recorded in a transaction of their own after the action's
transaction was rolled back.
"""

from __future__ import annotations

import hmac
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, Row, bindparam, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets import metrics
from airflow_provider_mlsecrets._process import disable_core_dumps
from airflow_provider_mlsecrets.audit import log as audit_log
from airflow_provider_mlsecrets.audit.freshness import with_written
from airflow_provider_mlsecrets.audit.record import (
    ContextValue,
    Entry,
    Outcome,
    canonical_context,
    format_ts,
)
from airflow_provider_mlsecrets.errors import (
    AccessDenied,
    AuditChainBroken,
    AuditError,
    ConfigurationError,
    IntegrityError,
    MLSecretsError,
    NotFound,
    StoreError,
    Unauthenticated,
    VersionConflict,
)
from airflow_provider_mlsecrets.keys import KeyProvider
from airflow_provider_mlsecrets.policy.decide import Decision, Rule, decide
from airflow_provider_mlsecrets.policy.roles import Capability, Role, parse_capabilities
from airflow_provider_mlsecrets.policy.tokens import token_hash, well_formed
from airflow_provider_mlsecrets.service._integrity import collecting, principal_intact
from airflow_provider_mlsecrets.service._marks import Marks
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.store import models
from airflow_provider_mlsecrets.store.engine import engine_for, safe_url

NOBODY = "<unauthenticated>"
TAMPERED = "record altered outside the vault"
REVOKED = "token revoked"
EXPIRED = "token expired"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Caller:
    """Who is asking: a principal token and where the call comes from (for the audit)."""

    token: str | None = field(repr=False)
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    # Principal names for an identity that a trusted layer of this process has already
    # verified (an Airflow user's or a task's signed token), most specific first: the first
    # one that exists is the caller. Never taken from a request as it is.
    verified: tuple[str, ...] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, component: str = "cli") -> Caller:
        return cls(token=settings.read_caller_token(), context=process_context(component))


def process_context(component: str) -> dict[str, ContextValue]:
    return {"component": component, "host": socket.gethostname(), "pid": os.getpid()}


@dataclass(frozen=True)
class Actor:
    """An authenticated principal with its rules."""

    name: str
    role: Role
    rules: tuple[Rule, ...]

    def may(self, capability: Capability, path: str | None) -> Decision:
        return decide(self.role, self.rules, capability, path)


@dataclass
class Op:
    """An operation in progress: its transaction, its actor, and what the record will say."""

    session: Session
    actor: Actor
    version: int | None = None
    reason: str = ""
    outcome: Outcome = Outcome.ALLOWED  # a body that records a failure it handled: ERROR
    request_id: str = ""  # the id its audit record will carry


class Core:
    """Settings, engine, keys and the operation discipline, shared by the service parts."""

    def __init__(self, settings: Settings, keys: KeyProvider | None = None) -> None:
        disable_core_dumps()  # this process will hold an HSM session, data keys, values
        self.settings = settings
        self._keys = keys
        self._vault_id: str | None = None
        self.marks = Marks(self)
        # set after every commit of an audit record: wakes this process's alert evaluator
        # (alerts/runner.py); setting an Event never blocks and never fails
        self.written = threading.Event()

    @property
    def keys(self) -> KeyProvider:
        if self._keys is None:
            from airflow_provider_mlsecrets.keys.cache import CachingKeyProvider
            from airflow_provider_mlsecrets.keys.pkcs11 import PKCS11KeyProvider

            self._keys = CachingKeyProvider(PKCS11KeyProvider(self.settings),
                                            ttl=self.settings.data_key_cache_ttl,
                                            uses=self.settings.data_key_cache_uses)
        return self._keys

    @property
    def engine(self) -> Engine:
        return engine_for(self.settings.db_url)

    def vault_id(self, session: Session) -> str:
        if self._vault_id is None:
            row = session.execute(select(models.Vault.vault_id)).scalar_one_or_none()
            if row is None:
                raise ConfigurationError(
                    f"the vault at {safe_url(self.settings.db_url)} is not initialised; run "
                    "'mlsecrets init' (or 'mlsecrets init --dev' for a local vault)"
                )
            self._vault_id = row
        return self._vault_id

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction; database failures become :class:`StoreError`."""
        with (self.database_errors(), Session(self.engine, expire_on_commit=False) as session,
              session.begin()):
            yield session

    @contextmanager
    def database_errors(self) -> Iterator[None]:
        try:
            yield
        except sa_exc.IntegrityError:
            raise VersionConflict(
                "another write changed the same object at the same moment; run it again"
            ) from None
        except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
            message = str(exc.orig)
            if ("no such table" in message or "does not exist" in message) \
                    and "mlsecrets_" in message:
                raise ConfigurationError(
                    f"the vault at {safe_url(self.settings.db_url)} is not initialised; "
                    "run 'mlsecrets init'"
                ) from None
            raise self._unreachable(exc) from None
        except sa_exc.DBAPIError as exc:
            raise self._unreachable(exc) from None
        except sa_exc.SQLAlchemyError as exc:
            raise StoreError(f"database error ({type(exc).__name__})") from None

    def _unreachable(self, exc: sa_exc.DBAPIError) -> StoreError:
        detail = str(exc.orig).strip().splitlines()[0][:200] if exc.orig else type(exc).__name__
        return StoreError(
            f"the database at {safe_url(self.settings.db_url)} failed: {detail}; check "
            "MLSECRETS_DB_URL and that the database is up (nothing was changed)"
        )

    # -- the operation discipline ----------------------------------------------------
    @contextmanager
    def operation(self, caller: Caller, action: str, capability: Capability | None,
                  path: str | None = None, version: int | None = None, *,
                  absent: Callable[[Session], bool] | None = None) -> Iterator[Op]:
        """Authenticate, authorise, run the body and audit it; see the module docstring.

        ``capability=None`` admits any authenticated principal (``status``). When an
        authenticated principal is denied and ``absent(session)`` says there is nothing at
        ``path``, the answer is "not found" instead (for lookups that must let a search go
        on to the next source)."""
        base = _Base(action=action, path=path or "", request_id=str(uuid.uuid4()),
                     context=canonical_context(caller.context))
        started, outcome = time.perf_counter(), Outcome.ERROR  # for metrics only
        session = Session(self.engine, expire_on_commit=False)
        try:
            with self.database_errors():
                session.begin()
                self.vault_id(session)
                actor, decision = self._authorise(session, caller, capability, path)
            # only a policy denial of a valid principal (or of a verified identity with no
            # principal bound to it yet, such as a DAG with nothing in the vault) may turn
            # into "not found"; a revoked or expired token, or a tampered record, learns
            # nothing about what exists
            if ((actor is not None or caller.verified) and not decision.allowed
                    and absent is not None and decision.reason not in (REVOKED, EXPIRED)
                    and not decision.reason.startswith(TAMPERED)):
                with self.database_errors():
                    missing = absent(session)
                if missing:
                    outcome = Outcome.NOT_FOUND
                    session.rollback()
                    who = actor.name if actor else (caller.verified or (NOBODY,))[0]
                    self._record_alone(base, who, actor.role.value if actor else "",
                                       Outcome.NOT_FOUND,
                                       f"nothing at {path} ({decision.reason})", version)
                    raise NotFound(f"no secret at {path}")
            if actor is None or not decision.allowed:
                outcome = Outcome.DENIED
                session.rollback()
                self._record_alone(base, actor.name if actor else (caller.verified or (NOBODY,))[0],
                                   actor.role.value if actor else "", Outcome.DENIED,
                                   decision.reason, version)
                if decision.reason.startswith(TAMPERED):
                    raise IntegrityError(f"{decision.reason}; restore the database from backup")
                if actor is None or decision.reason in (REVOKED, EXPIRED):
                    raise Unauthenticated(f"access denied: {decision.reason}")
                raise AccessDenied(f"access denied: {decision.reason}")
            op = Op(session=session, actor=actor, version=version, reason=decision.reason,
                    request_id=base.request_id)
            try:
                with self.database_errors():
                    with collecting() as sealed:
                        yield op
                    chain = self._append(session, base, actor.name, actor.role.value,
                                         op.outcome, op.reason, op.version, sealed)
                    session.commit()
            except BaseException as exc:
                session.rollback()
                outcome = (Outcome.NOT_FOUND if isinstance(exc, NotFound)
                           else Outcome.DENIED if isinstance(exc, AccessDenied)
                           else Outcome.ERROR)
                self._record_alone(base, actor.name, actor.role.value, outcome,
                                   _failure_reason(exc), op.version)
                raise
            outcome = op.outcome
            self.written.set()
            self.marks.after_commit(chain)
        finally:
            session.close()
            metrics.operation(action, outcome.value, time.perf_counter() - started,
                              caller.context)

    def record(self, action: str, principal: str, outcome: Outcome, reason: str,
               context: Mapping[str, ContextValue], path: str = "") -> None:
        """Write one record that describes no operation of its own (a summary of failures
        refused without one, a task identity refused before any lookup), in its own
        transaction; fail closed."""
        self._record_alone(_Base(action=action, path=path, request_id=str(uuid.uuid4()),
                                 context=canonical_context(context)),
                           principal, "", outcome, reason, None)

    def authentication_failure(self, caller: Caller) -> str | None:
        """Why ``caller`` does not authenticate, checked as :meth:`operation` checks it but
        without a record; ``None`` if it does, or if a row failed its integrity check (the
        vault must then see and record that itself, in an operation)."""
        with self.transaction() as session:
            actor, decision = self._authorise(session, caller, None, None)
        if (actor is not None and decision.allowed) or decision.reason.startswith(TAMPERED):
            return None
        return decision.reason

    def _authorise(self, session: Session, caller: Caller, capability: Capability | None,
                   path: str | None) -> tuple[Actor | None, Decision]:
        principal = self._principal(session, caller)
        if isinstance(principal, Decision):
            return None, principal
        if not principal_intact(self.keys, self.vault_id(session), principal, principal.grants):
            return None, Decision(False, f"{TAMPERED}: principal {principal.name}")
        actor = Actor(name=principal.name, role=Role(principal.role), rules=tuple(
            Rule(pattern=g.pattern, capabilities=parse_capabilities([g.capabilities]),
                 deny=g.effect == "deny") for g in principal.grants))
        if principal.revoked_at is not None:
            return actor, Decision(False, REVOKED)
        if principal.expires_at is not None and principal.expires_at <= utcnow():
            return actor, Decision(False, EXPIRED)
        if capability is None:
            return actor, Decision(True, "authenticated")
        return actor, actor.may(capability, path)

    def _principal(self, session: Session, caller: Caller) -> _Principal | Decision:
        """The caller's principal row with its grants (one query), found by its token
        (constant-time checked) or by a verified name; a :class:`Decision` saying why not
        otherwise."""
        connection = session.connection()
        if caller.verified:
            for name in caller.verified:
                principal = _Principal.of(connection.execute(_BY_NAME, {"key": name}).all())
                if principal is not None:
                    return principal
            if caller.verified[0].startswith("<"):  # a process's own name: never bound
                return Decision(False, f"{caller.verified[0]} has no principal: give this "
                                "process a token (token_file) to be granted secrets")
            return Decision(False, f"no principal is bound to {' or '.join(caller.verified)} "
                            "(a security engineer creates one with 'mlsecrets principal "
                            f"create {caller.verified[0]} --role ROLE')")
        token = caller.token
        if not token:
            return Decision(False, "no token given (set MLSECRETS_TOKEN_FILE)")
        if not well_formed(token):
            return Decision(False, "malformed token")
        digest = token_hash(self.keys, token)
        principal = _Principal.of(connection.execute(_BY_TOKEN, {"key": digest}).all())
        if principal is None or not hmac.compare_digest(principal.token_hash, digest):
            return Decision(False, "unknown token")
        return principal

    def _append(self, session: Session, base: _Base, principal: str, roles: str,
                outcome: Outcome, reason: str, version: int | None,
                sealed: Sequence[tuple[str, str, int]] = ()) -> int:
        """Append the record (naming the generations of the rows ``sealed``, see
        audit/freshness.py); the chain it went to."""
        started = time.perf_counter()
        context = base.context if not sealed else with_written(base.context, sealed)
        chain = audit_log.append(session, self.keys, Entry(
            ts=format_ts(utcnow()), principal=principal, roles=roles, action=base.action,
            path=base.path, version=version, outcome=outcome.value, reason=reason,
            request_id=base.request_id, context=context), self.vault_id(session))[0]
        metrics.append(time.perf_counter() - started)
        return chain

    def _record_alone(self, base: _Base, principal: str, roles: str, outcome: Outcome,
                      reason: str, version: int | None) -> None:
        """Write one record in its own transaction; if that fails, fail closed, loudly."""
        try:
            with self.transaction() as session:
                chain = self._append(session, base, principal, roles, outcome, reason, version)
        except AuditChainBroken:
            raise  # tampering: exit 5 and what to do, not "could not be written"
        except MLSecretsError as exc:
            raise AuditError(
                f"the audit record for {base.action} could not be written ({exc}); "
                "nothing was done"
            ) from exc
        self.written.set()
        self.marks.after_commit(chain)


_PRINCIPALS = models.Principal.__table__
_GRANTS = models.Grant.__table__
_WITH_GRANTS = select(_PRINCIPALS, _GRANTS.c.pattern, _GRANTS.c.effect, _GRANTS.c.capabilities
                      ).outerjoin(_GRANTS, _GRANTS.c.principal_id == _PRINCIPALS.c.id)
_BY_TOKEN = _WITH_GRANTS.where(_PRINCIPALS.c.token_hash == bindparam("key"))
_BY_NAME = _WITH_GRANTS.where(_PRINCIPALS.c.name == bindparam("key"))


@dataclass(frozen=True)
class _Grant:
    pattern: str
    effect: str
    capabilities: str


@dataclass(frozen=True)
class _Principal:
    """A principal row and its grants, read in one statement on every operation."""

    name: str
    role: str
    token_hash: bytes
    expires_at: datetime | None
    revoked_at: datetime | None
    mac: bytes | None
    generation: int
    grants: tuple[_Grant, ...]

    @classmethod
    def of(cls, rows: Sequence[Row[Any]]) -> _Principal | None:
        if not rows:
            return None
        p = rows[0]
        return cls(name=p.name, role=p.role, token_hash=p.token_hash, expires_at=p.expires_at,
                   revoked_at=p.revoked_at, mac=p.mac, generation=p.generation, grants=tuple(
                       _Grant(r.pattern, r.effect, r.capabilities)
                       for r in rows if r.pattern is not None))


@dataclass(frozen=True)
class _Base:
    action: str
    path: str
    request_id: str
    context: str


def _failure_reason(exc: BaseException) -> str:
    """What the audit record says of a failure: our own messages (which never hold a value)
    or, for anything else, only the exception's type."""
    if isinstance(exc, MLSecretsError):
        return f"{type(exc).__name__}: {exc}"[:500]
    return type(exc).__name__
