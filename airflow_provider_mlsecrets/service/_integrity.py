"""HSM-keyed MACs over the rows that decide access and which version is served.

Without them, write access to the database could give a pipeline the security engineer's
role, delete an explicit deny, or point a secret back at an older version. Each principal
row carries ``HMAC(K_integrity, canonical(vault_id, name, role, token_hash, expiry,
revocation, digest of its grants))`` and each secret row ``HMAC(K_integrity,
canonical(vault_id, path, latest, current, deleted, versions kept[, rotation policy]))``,
computed in the HSM whenever the vault changes them and checked whenever it relies on them.
A changed, added or removed grant changes its principal's MAC.

A MAC alone cannot tell a row from an older copy of itself. So each seal also counts the
row's ``generation`` (under the MAC: the ``-v2`` encodings put it after the tag) and notes
it for the audit record of the operation in progress (:func:`collecting`), whose context
names it (``"wrote"``). ``audit verify`` then finds a row put back behind the newest
generation its trail names (audit/freshness.py). A row never sealed since this came in is
generation 0 and keeps its ``-v1`` MAC.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets import canonical
from airflow_provider_mlsecrets.audit.record import format_ts
from airflow_provider_mlsecrets.errors import IntegrityError
from airflow_provider_mlsecrets.keys import KeyProvider, MacKey
from airflow_provider_mlsecrets.store.models import (
    AccessRequest,
    Grant,
    Principal,
    Secret,
    VaultPolicy,
)

PRINCIPAL_TAG = "mlsecrets-principal-v1"
SECRET_TAG = "mlsecrets-secret-v1"  # noqa: S105 - a domain tag # nosec B105
POLICY_TAG = "mlsecrets-policy-v1"
ACCESS_REQUEST_TAG = "mlsecrets-access-request-v1"

# what the operation in progress on this thread has sealed: (kind, key, generation)
_sealed: ContextVar[list[tuple[str, str, int]] | None] = ContextVar("mlsecrets_sealed",
                                                                     default=None)


@contextmanager
def collecting() -> Iterator[list[tuple[str, str, int]]]:
    """Collect what is sealed within (an operation's body), for its audit record."""
    sealed: list[tuple[str, str, int]] = []
    token = _sealed.set(sealed)
    try:
        yield sealed
    finally:
        _sealed.reset(token)


def _next_generation(kind: str, key: str, row: _Generational) -> int:
    row.generation = (row.generation or 0) + 1
    sealed = _sealed.get()
    if sealed is not None:
        sealed.append((kind, key, row.generation))
    return row.generation


def _encode(tag: str, generation: int, *fields: str | int | bytes) -> bytes:
    """``tag`` (a ``-v1`` tag) and ``fields``; from generation 1 on, the ``-v2`` tag and the
    generation first."""
    if not generation:
        return canonical.encode(tag, *fields)
    return canonical.encode(tag.removesuffix("-v1") + "-v2", generation, *fields)


class _Generational(Protocol):
    generation: int


def _ts(moment: datetime | None) -> str:
    return "" if moment is None else format_ts(moment)


class PrincipalFields(Protocol):
    """What a principal's MAC covers: an ORM row or a plain row from a Core query."""

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def token_hash(self) -> bytes: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def generation(self) -> int: ...
    @property
    def mac(self) -> bytes | None: ...


class GrantFields(Protocol):
    @property
    def pattern(self) -> str: ...
    @property
    def effect(self) -> str: ...
    @property
    def capabilities(self) -> str: ...


class SecretFields(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def latest_version(self) -> int: ...
    @property
    def current_version(self) -> int | None: ...
    @property
    def deleted_at(self) -> datetime | None: ...
    @property
    def max_versions(self) -> int | None: ...
    @property
    def rotation(self) -> str | None: ...
    @property
    def generation(self) -> int: ...
    @property
    def mac(self) -> bytes | None: ...


def _principal_bytes(vault_id: str, p: PrincipalFields, grants: Sequence[GrantFields]) -> bytes:
    digest = hashlib.sha256(canonical.encode(
        *sorted(canonical.encode(g.pattern, g.effect, g.capabilities) for g in grants))).digest()
    return _encode(PRINCIPAL_TAG, p.generation or 0, vault_id, p.name, p.role, p.token_hash,
                   _ts(p.expires_at), _ts(p.revoked_at), digest)


def grants_of(session: Session, p: Principal) -> Sequence[GrantFields]:
    session.flush()
    return session.execute(select(Grant.pattern, Grant.effect, Grant.capabilities)
                           .where(Grant.principal_id == p.id)).all()


def _secret_bytes(vault_id: str, s: SecretFields) -> bytes:
    current = "" if s.current_version is None else str(s.current_version)
    kept = "" if s.max_versions is None else str(s.max_versions)
    fields: tuple[str | int, ...] = (vault_id, s.path, s.latest_version, current,
                                     _ts(s.deleted_at), kept)
    # a rotation policy is appended only when set, so rows without one keep their MAC
    return _encode(SECRET_TAG, s.generation or 0, *fields,
                   *(() if s.rotation is None else (s.rotation,)))


def seal_principal(keys: KeyProvider, session: Session, vault_id: str, p: Principal) -> None:
    _next_generation("principal", p.name, p)
    p.mac = keys.mac(MacKey.INTEGRITY, _principal_bytes(vault_id, p, grants_of(session, p)))


def principal_intact(keys: KeyProvider, vault_id: str, p: PrincipalFields,
                     grants: Sequence[GrantFields]) -> bool:
    """``grants``: the principal's grants as read from the database just now."""
    return _intact(keys, _principal_bytes(vault_id, p, grants), p.mac)


def check_principal(keys: KeyProvider, session: Session, vault_id: str, p: Principal) -> None:
    if not principal_intact(keys, vault_id, p, grants_of(session, p)):
        raise IntegrityError(f"the record of principal {p.name} was altered outside the vault")


def seal_secret(keys: KeyProvider, vault_id: str, s: Secret) -> None:
    _next_generation("secret", s.path, s)
    s.mac = keys.mac(MacKey.INTEGRITY, _secret_bytes(vault_id, s))


def check_secret(keys: KeyProvider, vault_id: str, s: SecretFields) -> None:
    if not _intact(keys, _secret_bytes(vault_id, s), s.mac):
        raise IntegrityError(f"the record of {s.path} was altered outside the vault")


def _policy_bytes(vault_id: str, p: VaultPolicy) -> bytes:
    return _encode(POLICY_TAG, p.generation or 0, vault_id, p.name, p.value, p.changed_by,
                   _ts(p.changed_at))


def seal_policy(keys: KeyProvider, vault_id: str, p: VaultPolicy) -> None:
    _next_generation("policy", p.name, p)
    p.mac = keys.mac(MacKey.INTEGRITY, _policy_bytes(vault_id, p))


def check_policy(keys: KeyProvider, vault_id: str, p: VaultPolicy) -> None:
    if not _intact(keys, _policy_bytes(vault_id, p), p.mac):
        raise IntegrityError(f"the {p.name} policy was altered outside the vault")


def _request_bytes(vault_id: str, r: AccessRequest) -> bytes:
    return _encode(ACCESS_REQUEST_TAG, r.generation or 0, vault_id, r.id, r.principal, r.path,
                   r.justification, r.window_seconds, _ts(r.requested_at), r.state,
                   r.decided_by or "", _ts(r.decided_at), _ts(r.expires_at))


def seal_access_request(keys: KeyProvider, vault_id: str, r: AccessRequest) -> None:
    _next_generation("access-request", r.id, r)
    r.mac = keys.mac(MacKey.INTEGRITY, _request_bytes(vault_id, r))


def access_request_intact(keys: KeyProvider, vault_id: str, r: AccessRequest) -> bool:
    return _intact(keys, _request_bytes(vault_id, r), r.mac)


def _intact(keys: KeyProvider, data: bytes, mac: bytes | None) -> bool:
    """Whether ``mac`` is the HSM's MAC of ``data`` (constant time; none fails)."""
    return hmac.compare_digest(keys.mac(MacKey.INTEGRITY, data), mac or b"")
