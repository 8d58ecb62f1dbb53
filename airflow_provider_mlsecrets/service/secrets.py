"""Secrets and their versions: write, read, inject, list, delete, undelete, destroy."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Integer, Row, and_, bindparam, func, select
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets.crypto import sealed as sealed_tokens
from airflow_provider_mlsecrets.crypto.envelope import (
    UNAUTHENTIC,
    Binding,
    Envelope,
    Sealed,
    is_kek_label,
)
from airflow_provider_mlsecrets.errors import (
    AccessDenied,
    IntegrityError,
    InvalidInput,
    KeyMissing,
    NotFound,
    VersionConflict,
)
from airflow_provider_mlsecrets.keys import KekId
from airflow_provider_mlsecrets.paths import parse_path, parse_prefix
from airflow_provider_mlsecrets.policy.roles import Capability
from airflow_provider_mlsecrets.service._core import Caller, Core, Op, utcnow
from airflow_provider_mlsecrets.service._integrity import (
    SecretFields,
    check_secret,
    seal_secret,
)
from airflow_provider_mlsecrets.service.break_glass import (
    authorise_read,
    justification_of,
    justified,
)
from airflow_provider_mlsecrets.service.keys import USABLE_KEK_STATES, check_usable, current_kek
from airflow_provider_mlsecrets.store.models import (
    Kek,
    Rotation,
    RotationStep,
    Secret,
    SecretVersion,
    VersionState,
)


@dataclass(frozen=True)
class SecretInfo:
    path: str
    description: str
    owner: str
    latest_version: int
    current_version: int | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


@dataclass(frozen=True)
class VersionInfo:
    path: str
    version: int
    state: str
    kek_id: str
    created_by: str
    created_at: datetime
    destroyed_at: datetime | None


def _secret_info(s: Secret) -> SecretInfo:
    return SecretInfo(path=s.path, description=s.description, owner=s.owner,
                      latest_version=s.latest_version, current_version=s.current_version,
                      created_at=s.created_at, updated_at=s.updated_at, deleted_at=s.deleted_at)


def _version_info(path: str, v: SecretVersion) -> VersionInfo:
    return VersionInfo(path=path, version=v.version, state=v.state, kek_id=v.kek_id,
                       created_by=v.created_by, created_at=v.created_at,
                       destroyed_at=v.destroyed_at)


class SecretsService:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._envelope: Envelope | None = None

    @property
    def envelope(self) -> Envelope:
        if self._envelope is None:
            self._envelope = Envelope(self._core.keys,
                                      kek_prefix=self._core.settings.key_prefix)
        return self._envelope

    # -- writing ---------------------------------------------------------------------
    def put(self, caller: Caller, path: str, value: bytes, *, cas: int | None = None,
            description: str | None = None, owner: str | None = None) -> VersionInfo:
        """Store ``value`` as the new current version. ``cas=N`` writes only if the newest
        version is still N (``cas=0``: only if the secret does not exist yet)."""
        path = parse_path(path)
        self._check_value(value)
        if cas is not None and cas < 0:
            raise InvalidInput("--cas takes a version number, 0 for 'must not exist yet'")
        with self._core.operation(caller, "secret.write", Capability.WRITE, path) as op:
            secret = self.find(op.session, path, lock=True)
            latest = secret.latest_version if secret is not None else 0
            if cas is not None and cas != latest:
                raise VersionConflict(
                    f"check-and-set failed for {path}: the newest version is {latest}, not {cas}")
            now = utcnow()
            if secret is None:
                secret = Secret(path=path, description="", owner="", tags="{}", latest_version=0,
                                created_at=now, updated_at=now)
                op.session.add(secret)
                op.session.flush()
            elif secret.deleted_at is not None:
                raise InvalidInput(f"{path} is deleted; 'mlsecrets secret undelete {path}' first")
            else:
                _refuse_during_rotation(op.session, secret)
            if description is not None:
                secret.description = description
            if owner is not None:
                secret.owner = owner
            row = self.add_version(op.session, secret, value, created_by=op.actor.name)
            replaced = secret.current_version
            self.make_current(op.session, secret, row)
            start_grace(op.session, secret, replaced)
            version = row.version
            op.session.flush()
            pruned = self.prune(op.session, secret)
            op.version = version
            op.reason += f"; version {version}" + (f"; destroyed old {pruned}" if pruned else "")
            return _version_info(path, row)

    def add_version(self, session: Session, secret: Secret, value: bytes, *,
                    created_by: str) -> SecretVersion:
        """Seal ``value`` as the next version, ``pending`` until :meth:`make_current`."""
        self._check_value(value)
        version = secret.latest_version + 1
        kek = self._current_kek(session)
        sealed = self.envelope.seal(value, self._binding(session, secret.path, version), kek)
        row = SecretVersion(
            secret_id=secret.id, version=version, state=VersionState.PENDING.value,
            format_version=sealed.format_version, kek_id=sealed.kek_id,
            wrapped_key=sealed.wrapped_key, nonce=sealed.nonce, ciphertext=sealed.ciphertext,
            created_by=created_by, created_at=utcnow())
        session.add(row)
        secret.latest_version = version
        secret.updated_at = row.created_at
        return row

    def make_current(self, session: Session, secret: Secret, row: SecretVersion) -> None:
        """Serve ``row`` from now on: the current version becomes ``previous``, the previous
        one ``retired``. The caller re-seals the secret row (:meth:`seal_row`)."""
        for older in session.scalars(select(SecretVersion).where(
                SecretVersion.secret_id == secret.id, SecretVersion.id != row.id,
                SecretVersion.state.in_([VersionState.CURRENT.value,
                                         VersionState.PREVIOUS.value]))):
            if older.state == VersionState.CURRENT.value:
                older.state = VersionState.PREVIOUS.value
            else:
                retire(older)
        row.state = VersionState.CURRENT.value
        secret.current_version = row.version
        secret.updated_at = utcnow()
        self.seal_row(session, secret)

    def delete(self, caller: Caller, path: str) -> None:
        """Soft delete: the secret stops being served but every version is kept."""
        self._set_deleted(caller, path, deleted=True)

    def undelete(self, caller: Caller, path: str) -> None:
        self._set_deleted(caller, path, deleted=False)

    def destroy(self, caller: Caller, path: str, version: int) -> None:
        """Erase one version's ciphertext and wrapped key for good; its metadata stays."""
        path = parse_path(path)
        with self._core.operation(caller, "secret.destroy", Capability.DESTROY, path,
                                  version) as op:
            secret = self.existing(op.session, path, lock=True, include_deleted=True)
            row = self.version_row(op.session, secret, version)
            if row.state == VersionState.DESTROYED.value:
                op.reason += "; already destroyed"
                return
            if version in rotation_versions(op.session, secret):
                raise VersionConflict(
                    f"version {version} of {path} is still needed by its rotation (pending, or "
                    "awaiting invalidation at its service); finish or cancel the rotation "
                    f"('mlsecrets rotate {path}' / 'mlsecrets rotation cancel {path}') first")
            if secret.current_version == version:
                secret.current_version = None
                self.seal_row(op.session, secret)
            erase(row)

    # -- reading ---------------------------------------------------------------------
    def read(self, caller: Caller, path: str, version: int | None = None, *,
             reason: str | None = None) -> bytes:
        """Plaintext back to a person (``read``: security engineers only), with the
        ``reason`` its audit record keeps; a critical path also needs an open approval
        (service/break_glass.py)."""
        text = justification_of(reason)
        return self._open(justified(caller, text), path, version, Capability.READ,
                          "secret.read",
                          guard=lambda op, path: authorise_read(self._core, op, path, text))

    def inject(self, caller: Caller, path: str, version: int | None = None) -> bytes:
        """Plaintext into a task, connection or environment (``inject``).

        A path where nothing is stored is "not found" even without a grant, so Airflow's
        backend chain can go on to the next source; a secret that exists but is not granted
        is denied, so no other source can serve that name instead."""
        return self._open(caller, path, version, Capability.INJECT, "secret.inject",
                          absent=lambda session: _holds_name(session, path) is None)

    def seal(self, caller: Caller, path: str, value: bytes) -> str:
        """A sealed token for ``value`` bound to ``path`` (``write`` on the path); nothing is
        stored. It opens only through :meth:`unseal` for a principal with ``inject``, and
        not while a secret at ``path`` is deleted (so none is made for one)."""
        path = parse_path(path)
        self._check_value(value)
        with self._core.operation(caller, "secret.seal", Capability.WRITE, path) as op:
            if _unservable(self.find(op.session, path)):
                raise InvalidInput(
                    f"{path} is deleted or has no current version, so a value sealed for it "
                    f"would not open; 'mlsecrets secret undelete {path}' (or put a new "
                    "version) first")
            kek = self._current_kek(op.session)
            sealed = self.envelope.seal(
                value, sealed_tokens.binding(self._core.vault_id(op.session), path), kek)
            return sealed_tokens.to_token(sealed)

    def reseal(self, caller: Caller, path: str, token: str) -> str:
        """The same sealed value under the current KEK (``write`` on the path): for tokens
        made before a key rotation, while the retired key is still enabled. The value is
        opened and sealed again in one step and never returned."""
        path = parse_path(path)
        with self._core.operation(caller, "secret.reseal", Capability.WRITE, path) as op:
            binding = sealed_tokens.binding(self._core.vault_id(op.session), path)
            try:
                old = sealed_tokens.from_token(token)
                check_usable(op.session, old.kek_id)
                new = self.envelope.rewrap(
                    old, binding, self._current_kek(op.session))
            except KeyMissing:
                raise IntegrityError("the data could not be authenticated") from None
            op.reason += f"; {old.kek_id} -> {new.kek_id}"
            return sealed_tokens.to_token(new)

    def unseal(self, caller: Caller, path: str, token: str) -> bytes:
        """Open a sealed token as ``path`` (``inject``); a token sealed for another path or
        vault, or altered, raises :class:`IntegrityError` and is audited as an error.

        A path where the vault holds a secret follows that secret: once it is deleted, or
        its current version destroyed, sealed values for the path are refused like the
        secret itself (until it is undeleted or written again). Deleting the secret is how
        a security engineer withdraws what was sealed for its name."""
        path = parse_path(path)
        with self._core.operation(caller, "secret.unseal", Capability.INJECT, path) as op:
            if _unservable(self.find(op.session, path)):
                raise AccessDenied(
                    f"{path} is deleted or has no current version, so values sealed for it "
                    f"no longer open ('mlsecrets secret undelete {path}' restores them)")
            try:
                sealed = sealed_tokens.from_token(token)
                check_usable(op.session, sealed.kek_id)
                value = self.envelope.open(
                    sealed,
                    sealed_tokens.binding(self._core.vault_id(op.session), path))
            except KeyMissing:  # a token naming a key we never had: tampered, opaquely
                raise IntegrityError("the data could not be authenticated") from None
        return value

    def list(self, caller: Caller, prefix: str = "", *,
             include_deleted: bool = False) -> builtins.list[SecretInfo]:
        """Metadata of the secrets under ``prefix`` that the caller may list. Every secret is
        checked on its own, so the answer is exactly what the caller's grants cover."""
        prefix = parse_prefix(prefix)
        with self._core.operation(caller, "secret.list", None, prefix or None) as op:
            query = select(Secret).order_by(Secret.path)
            if prefix:
                query = query.where(Secret.path.startswith(prefix, autoescape=True))
            out = []
            for s in op.session.scalars(query):
                if (include_deleted or s.deleted_at is None) and op.actor.may(
                        Capability.LIST, s.path).allowed:
                    self.check(op.session, s)
                    out.append(_secret_info(s))
            op.reason += f"; {len(out)} shown"
            return out

    def versions(self, caller: Caller, path: str) -> builtins.list[VersionInfo]:
        path = parse_path(path)
        with self._core.operation(caller, "secret.versions", Capability.LIST, path) as op:
            secret = self.existing(op.session, path, include_deleted=True)
            return [_version_info(path, v) for v in secret.versions]

    # -- helpers ---------------------------------------------------------------------
    def _open(self, caller: Caller, path: str, version: int | None, capability: Capability,
              action: str, absent: Callable[[Session], bool] | None = None,
              guard: Callable[[Op, str], None] | None = None) -> bytes:
        path = parse_path(path)
        with self._core.operation(caller, action, capability, path, version,
                                  absent=absent) as op:
            if guard is not None:
                guard(op, path)
            found = self._servable(op.session, path, version) if absent is not None \
                else self._readable(op.session, path, version)
            if found.v_version is None:
                if version is None:
                    raise NotFound(f"{path} has no current version")
                raise NotFound(f"{path} has no version {version}")
            if found.v_state == VersionState.DESTROYED.value:
                if found.ciphertext is not None or found.wrapped_key is not None:
                    raise IntegrityError(f"version {found.v_version} of {path} is marked "
                                         "destroyed but still holds data: altered outside "
                                         "the vault")
                error = AccessDenied if absent is not None else NotFound
                raise error(f"version {found.v_version} of {path} was destroyed")
            op.version = found.v_version
            self._check_kek(path, found.v_version, found.kek_id)
            if found.kek_state not in USABLE_KEK_STATES:
                raise IntegrityError(
                    f"{UNAUTHENTIC}: version {found.v_version} of {path} names key-encryption "
                    f"key {found.kek_id!r}, which the key table does not list as current or "
                    "retired (disabled, or the row was altered outside the vault)")
            value = self._unseal(op.session, path, found.v_version, found)
        return value

    def decrypt(self, session: Session, path: str, row: SecretVersion) -> bytes:
        """The plaintext of a version row, inside an operation that was authorised for it."""
        self._check_kek(path, row.version, row.kek_id)
        check_usable(session, row.kek_id)
        return self._unseal(session, path, row.version, row)

    def _unseal(self, session: Session, path: str, version: int, row: _SealedFields) -> bytes:
        if row.wrapped_key is None or row.nonce is None or row.ciphertext is None:
            raise IntegrityError(f"version {version} of {path} has no data but is not "
                                 "marked destroyed: altered outside the vault")
        self._check_kek(path, version, row.kek_id)
        try:
            return self.envelope.open(
                Sealed(kek_id=KekId(row.kek_id), wrapped_key=row.wrapped_key, nonce=row.nonce,
                       ciphertext=row.ciphertext, format_version=row.format_version),
                self._binding(session, path, version))
        except KeyMissing:
            # the key table lists the key as usable, yet the HSM has no such key
            raise IntegrityError(
                f"version {version} of {path} names key-encryption key {row.kek_id!r}, which "
                "the key table lists but the HSM does not hold: the key table was altered "
                "outside the vault, or the token was replaced (check MLSECRETS_PKCS11_TOKEN); "
                "restore the database from backup") from None

    def _current_kek(self, session: Session) -> KekId:
        """The KEK to seal under (shared lock: see :func:`current_kek`), which must be a KEK
        label of this vault whatever the key table says."""
        label = current_kek(session, share=True).label
        if not is_kek_label(label, self._core.settings.key_prefix):
            raise IntegrityError(
                f"the key table names {label!r} as the current key-encryption key, which is "
                "not a key-encryption key of this vault: the table was altered outside the "
                "vault; restore it from backup")
        return KekId(label)

    def _check_kek(self, path: str, version: int, kek_id: str | None) -> None:
        """A version names a KEK of this vault (``<prefix>-kek-<n>``) or it was altered: the
        token's MAC keys are never handed to the HSM as if they were KEKs."""
        if kek_id is None or not is_kek_label(kek_id, self._core.settings.key_prefix):
            raise IntegrityError(
                f"version {version} of {path} names {kek_id!r}, which is not a key-encryption "
                "key of this vault: the row was altered outside the vault; restore it from "
                "backup and check the audit trail ('mlsecrets audit verify')")

    def _readable(self, session: Session, path: str, version: int | None) -> Row[Any]:
        """The secret at ``path`` joined with the asked (or current) version and the state
        of its KEK, in one statement, its row checked against its MAC."""
        found = session.connection().execute(_OPEN_EXACT, {
            "path": path, "version": version}).one_or_none()
        if found is None:
            raise NotFound(f"no secret at {path}")
        self.check(session, found)
        if found.deleted_at is not None:
            raise NotFound(f"{path} is deleted ('mlsecrets secret undelete {path}' restores it)")
        return found

    def _servable(self, session: Session, path: str, version: int | None) -> Row[Any]:
        """As :meth:`_readable`, for lookups that fall through to other sources on "not
        found": :class:`NotFound` only when the vault holds no such name in any letter case.
        A name the vault holds but cannot serve is a refusal, never a miss, so no other
        source can serve it instead (Airflow's environment backend upper-cases ids; a
        deleted, destroyed or version-less secret is still ours)."""
        rows = session.connection().execute(_OPEN_ANY_CASE, {
            "lower": path.lower(), "version": version}).all()
        if not rows:
            raise NotFound(f"no secret at {path}")
        found = next((r for r in rows if r.path == path), None)
        if found is None:
            raise AccessDenied(f"the vault holds {rows[0].path}, which differs from {path} "
                               "only in case; refusing so that no other source serves this "
                               "name")
        self.check(session, found)
        if found.deleted_at is not None or found.current_version is None:
            raise AccessDenied(f"{path} is in the vault but cannot be served (deleted or no "
                               "current version); refusing so that no other source serves it")
        return found

    def _set_deleted(self, caller: Caller, path: str, *, deleted: bool) -> None:
        path = parse_path(path)
        action = "secret.delete" if deleted else "secret.undelete"
        with self._core.operation(caller, action, Capability.DELETE, path) as op:
            secret = self.existing(op.session, path, lock=True, include_deleted=True)
            if (secret.deleted_at is not None) == deleted:
                op.reason += "; no change"
                return
            secret.deleted_at = utcnow() if deleted else None
            self.seal_row(op.session, secret)

    def _check_value(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("a secret value is bytes")
        # an empty value is a value: Airflow variables may be empty, and must be able to
        # move to the vault (AES-GCM seals zero bytes as well as any other number)
        limit = self._core.settings.max_value_bytes
        if len(value) > limit:
            raise InvalidInput(f"the value is over the limit of {limit} bytes "
                               "(MLSECRETS_MAX_VALUE_BYTES)")

    def _binding(self, session: Session, path: str, version: int) -> Binding:
        return Binding(vault_id=self._core.vault_id(session), path=path, version=version)

    def find(self, session: Session, path: str, *, lock: bool = False) -> Secret | None:
        """The secret row, checked against its integrity MAC before anything relies on it."""
        query = select(Secret).where(Secret.path == path)
        if lock:
            query = query.with_for_update()
        secret = session.execute(query).scalar_one_or_none()
        if secret is not None:
            self.check(session, secret)
        return secret

    def check(self, session: Session, secret: SecretFields) -> None:
        check_secret(self._core.keys, self._core.vault_id(session), secret)

    def seal_row(self, session: Session, secret: Secret) -> None:
        seal_secret(self._core.keys, self._core.vault_id(session), secret)

    def existing(self, session: Session, path: str, *, lock: bool = False,
                  include_deleted: bool = False) -> Secret:
        secret = self.find(session, path, lock=lock)
        if secret is None:
            raise NotFound(f"no secret at {path}")
        if secret.deleted_at is not None and not include_deleted:
            raise NotFound(f"{path} is deleted ('mlsecrets secret undelete {path}' restores it)")
        return secret

    @staticmethod
    def version_row(session: Session, secret: Secret, version: int) -> SecretVersion:
        row = session.execute(select(SecretVersion).where(
            SecretVersion.secret_id == secret.id, SecretVersion.version == version)
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"{secret.path} has no version {version}")
        return row

    def prune(self, session: Session, secret: Secret) -> builtins.list[int]:
        """Destroy the oldest kept versions beyond the configured number."""
        keep = secret.max_versions or self._core.settings.max_versions
        kept = session.scalars(select(SecretVersion).where(
            SecretVersion.secret_id == secret.id,
            SecretVersion.state != VersionState.DESTROYED.value,
        ).order_by(SecretVersion.version.desc())).all()
        needed = rotation_versions(session, secret)
        pruned = []
        for row in kept[keep:]:
            if row.state in (VersionState.CURRENT.value, VersionState.PENDING.value) \
                    or row.version in needed:
                continue
            erase(row)
            pruned.append(row.version)
        return sorted(pruned)


def _unservable(secret: Secret | None) -> bool:
    """A secret that exists but is not served: soft-deleted, or its current version
    destroyed."""
    return secret is not None and (secret.deleted_at is not None
                                   or secret.current_version is None)


def retire(row: SecretVersion) -> None:
    row.state = VersionState.RETIRED.value
    row.retired_at = utcnow()


def erase(row: SecretVersion) -> None:
    row.wrapped_key = row.nonce = row.ciphertext = None
    row.state = VersionState.DESTROYED.value
    row.destroyed_at = utcnow()


def rotation_busy(session: Session, secret: Secret) -> str | None:
    """Why a rotation of ``secret`` is in progress (a step past ``idle``, or a run holding
    its lease), or ``None``."""
    state = _rotation_state(session, secret)
    if state is None:
        return None
    if state.step != RotationStep.IDLE.value:
        return f"a rotation of {secret.path} is half done ({state.step})"
    if state.owner is not None and state.lease_until is not None \
            and state.lease_until > utcnow():
        return f"a rotation of {secret.path} is running"
    return None


def awaiting_invalidation(session: Session, secret: Secret) -> builtins.list[SecretVersion]:
    """Older versions a rotation has yet to invalidate at their service: every one below the
    current version (which the secret's MAC covers, so the current value is never among
    them) that still holds its data and was not invalidated, once a grace period runs."""
    state = _rotation_state(session, secret)
    if state is None or state.invalidate_after is None:
        return []
    current = secret.current_version or 0
    return [v for v in secret.versions
            if v.version < current and v.invalidated_at is None and v.wrapped_key is not None
            and v.state in (VersionState.PREVIOUS.value, VersionState.RETIRED.value)]


def rotation_versions(session: Session, secret: Secret) -> set[int]:
    """Versions a rotation still needs: its pending value, and the older values it has yet
    to invalidate at the service."""
    state = _rotation_state(session, secret)
    if state is None:
        return set()
    return ({v.version for v in awaiting_invalidation(session, secret)}
            | ({state.pending_version} if state.pending_version is not None else set()))


def _rotation_state(session: Session, secret: Secret) -> Rotation | None:
    return session.execute(select(Rotation).where(Rotation.secret_id == secret.id)
                           ).scalar_one_or_none()


def start_grace(session: Session, secret: Secret, previous: int | None) -> None:
    """After a new value became current: the one it replaced keeps working for the rotation
    policy's grace period, then the rotation invalidates it (and anything older) at the
    service. An earlier deadline still pending is kept, never extended."""
    state = _rotation_state(session, secret)
    if state is None or secret.rotation is None or previous is None:
        return
    from airflow_provider_mlsecrets.rotation.policy import RotationPolicy

    deadline = utcnow() + RotationPolicy.from_json(secret.rotation).grace_period
    state.previous_version = previous
    if state.invalidate_after is None or deadline < state.invalidate_after:
        state.invalidate_after = deadline


def _refuse_during_rotation(session: Session, secret: Secret) -> None:
    """A write between a rotation's ``create`` and ``finish`` would be overtaken by it (or
    leave the service holding a value the vault no longer serves)."""
    busy = rotation_busy(session, secret)
    if busy is not None:
        raise VersionConflict(
            f"{busy}; finish it with 'mlsecrets rotate {secret.path}' or abandon it with "
            f"'mlsecrets rotation cancel {secret.path}', then write")


class _SealedFields(Protocol):
    @property
    def kek_id(self) -> str: ...
    @property
    def wrapped_key(self) -> bytes | None: ...
    @property
    def nonce(self) -> bytes | None: ...
    @property
    def ciphertext(self) -> bytes | None: ...
    @property
    def format_version(self) -> int: ...


_SECRETS, _VERSIONS, _KEKS = Secret.__table__, SecretVersion.__table__, Kek.__table__
# a secret with the version asked for (or its current one) and that version's KEK state
_OPEN = select(
    _SECRETS, _VERSIONS.c.version.label("v_version"), _VERSIONS.c.state.label("v_state"),
    _VERSIONS.c.format_version, _VERSIONS.c.kek_id, _VERSIONS.c.wrapped_key, _VERSIONS.c.nonce,
    _VERSIONS.c.ciphertext, _KEKS.c.state.label("kek_state"),
).outerjoin(_VERSIONS, and_(
    _VERSIONS.c.secret_id == _SECRETS.c.id,
    _VERSIONS.c.version == func.coalesce(bindparam("version", type_=Integer),
                                         _SECRETS.c.current_version)),
).outerjoin(_KEKS, _KEKS.c.label == _VERSIONS.c.kek_id)
_OPEN_EXACT = _OPEN.where(_SECRETS.c.path == bindparam("path"))
_OPEN_ANY_CASE = _OPEN.where(func.lower(_SECRETS.c.path) == bindparam("lower"))


def _holds_name(session: Session, path: str) -> str | None:
    """The path of a secret whose name equals ``path`` ignoring case, if there is one."""
    held = session.scalars(select(Secret.path).where(
        func.lower(Secret.path) == path.lower())).all()
    return path if path in held else (held[0] if held else None)
