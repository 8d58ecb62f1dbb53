"""Principals and grants: who may do what, managed by holders of ``grant``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from airflow_provider_mlsecrets.errors import InvalidInput, NotFound, PolicyError
from airflow_provider_mlsecrets.paths import parse_pattern
from airflow_provider_mlsecrets.policy.roles import (
    Capability,
    Role,
    format_capabilities,
    parse_capabilities,
    parse_role,
)
from airflow_provider_mlsecrets.policy.tokens import new_token, token_hash
from airflow_provider_mlsecrets.service._core import Caller, Core, utcnow
from airflow_provider_mlsecrets.service._integrity import (
    check_principal,
    grants_of,
    principal_intact,
    seal_principal,
)
from airflow_provider_mlsecrets.store.models import Grant, Principal

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:\-]{0,127}")


@dataclass(frozen=True)
class PrincipalInfo:
    name: str
    role: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        return "active"


@dataclass(frozen=True)
class GrantInfo:
    principal: str
    role: str
    pattern: str
    effect: str
    capabilities: str
    created_by: str
    created_at: datetime


def parse_name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise InvalidInput(
            f"invalid principal name {text[:80]!r}: 1 to 128 characters from "
            "[A-Za-z0-9_.@:-], starting with a letter, digit or '_'")
    return text


def _principal_info(p: Principal) -> PrincipalInfo:
    return PrincipalInfo(name=p.name, role=p.role, created_by=p.created_by,
                         created_at=p.created_at, expires_at=p.expires_at,
                         revoked_at=p.revoked_at)


def active_engineers(core: Core, session: Session) -> int:
    """Security engineers whose token is neither revoked nor expired, and whose record is
    intact (a row forged into the database does not count)."""
    now, vault_id = utcnow(), core.vault_id(session)
    return len([p for p in session.scalars(select(Principal).where(
        Principal.role == Role.SECURITY_ENGINEER.value, Principal.revoked_at.is_(None)))
        if (p.expires_at is None or p.expires_at > now)
        and principal_intact(core.keys, vault_id, p, grants_of(session, p))])


def add_principal(core: Core, session: Session, name: str, role: Role, created_by: str,
                  expires_at: datetime | None = None) -> str:
    """Create a principal inside ``session``; return its token (the only copy)."""
    if session.execute(select(Principal.id).where(Principal.name == name)).first():
        raise InvalidInput(f"a principal named {name!r} already exists")
    token = new_token()
    principal = Principal(name=name, role=role.value, token_hash=token_hash(core.keys, token),
                          created_by=created_by, created_at=utcnow(), expires_at=expires_at)
    session.add(principal)
    reseal(core, session, principal)
    return token


def reseal(core: Core, session: Session, principal: Principal) -> None:
    """Recompute the principal's integrity MAC after it or its grants changed."""
    seal_principal(core.keys, session, core.vault_id(session), principal)


class AccessService:
    def __init__(self, core: Core) -> None:
        self._core = core

    def create_principal(self, caller: Caller, name: str, role: str,
                         expires_at: datetime | None = None) -> str:
        """Create a principal and return its token, which is shown once and never stored."""
        name, parsed_role = parse_name(name), parse_role(role)
        if expires_at is not None and expires_at <= utcnow():
            raise InvalidInput("the expiry is in the past")
        with self._core.operation(caller, "principal.create", Capability.GRANT) as op:
            op.reason += f"; created {name} as {parsed_role.value}"
            return add_principal(self._core, op.session, name, parsed_role, op.actor.name,
                                 expires_at)

    def list_principals(self, caller: Caller) -> list[PrincipalInfo]:
        with self._core.operation(caller, "principal.list", Capability.GRANT) as op:
            principals = op.session.scalars(select(Principal).order_by(Principal.name)).all()
            for p in principals:
                self._check(op.session, p)
            return [_principal_info(p) for p in principals]

    def revoke_principal(self, caller: Caller, name: str) -> None:
        name = parse_name(name)
        with self._core.operation(caller, "principal.revoke", Capability.GRANT) as op:
            principal = self._principal(op.session, name)
            if principal.revoked_at is not None:
                op.reason += f"; {name} was already revoked"
                return
            if principal.role == Role.SECURITY_ENGINEER.value and active_engineers(
                    self._core, op.session) <= 1:
                raise InvalidInput(
                    f"{name} is the last active security engineer; create another one first, "
                    "or nobody could manage the vault")
            principal.revoked_at = utcnow()
            reseal(self._core, op.session, principal)
            op.reason += f"; revoked {name}"

    def grant(self, caller: Caller, name: str, pattern: str, capabilities: list[str], *,
              deny: bool = False) -> GrantInfo:
        """Allow (or, with ``deny``, forbid) ``capabilities`` on ``pattern``. Grants add up:
        granting more capabilities on a pattern that already has some merges them."""
        name, pattern = parse_name(name), parse_pattern(pattern)
        caps = parse_capabilities(capabilities)
        effect = "deny" if deny else "allow"
        with self._core.operation(caller, "grant.create", Capability.GRANT, pattern) as op:
            principal = self._principal(op.session, name)
            role = Role(principal.role)
            beyond = caps - role.spec.ceiling
            if not deny and beyond:
                raise PolicyError(
                    f"role {role.value} can never hold {format_capabilities(beyond)}; "
                    f"it may be granted {format_capabilities(role.spec.ceiling)}")
            row = op.session.execute(select(Grant).where(
                Grant.principal_id == principal.id, Grant.pattern == pattern,
                Grant.effect == effect)).scalar_one_or_none()
            if row is None:
                row = Grant(principal_id=principal.id, pattern=pattern, effect=effect,
                            capabilities="", created_by=op.actor.name, created_at=utcnow())
                op.session.add(row)
            merged = caps | (parse_capabilities([row.capabilities]) if row.capabilities else set())
            row.capabilities = format_capabilities(merged)
            reseal(self._core, op.session, principal)
            op.reason += f"; {effect} {row.capabilities} on {pattern} to {name}"
            return GrantInfo(principal=name, role=role.value, pattern=pattern, effect=effect,
                             capabilities=row.capabilities, created_by=row.created_by,
                             created_at=row.created_at)

    def revoke_grant(self, caller: Caller, name: str, pattern: str) -> int:
        """Remove every grant (allow and deny) of ``name`` on exactly ``pattern``."""
        name, pattern = parse_name(name), parse_pattern(pattern)
        with self._core.operation(caller, "grant.revoke", Capability.GRANT, pattern) as op:
            principal = self._principal(op.session, name)
            rows = op.session.scalars(select(Grant).where(
                Grant.principal_id == principal.id, Grant.pattern == pattern)).all()
            if not rows:
                raise NotFound(f"{name} has no grant on {pattern}")
            for row in rows:
                op.session.delete(row)
            reseal(self._core, op.session, principal)
            op.reason += f"; removed {len(rows)} grant(s) of {name} on {pattern}"
            return len(rows)

    def policy(self, caller: Caller, name: str | None = None) -> list[GrantInfo]:
        """Every grant, or one principal's, with the roles' implicit grants shown too."""
        with self._core.operation(caller, "policy.show", Capability.GRANT) as op:
            query = select(Principal).options(selectinload(Principal.grants)).order_by(
                Principal.name)
            if name is not None:
                query = query.where(Principal.name == parse_name(name))
            principals = op.session.scalars(query).all()
            if name is not None and not principals:
                raise NotFound(f"no principal named {name!r}")
            out = []
            for p in principals:
                self._check(op.session, p)
                implicit = Role(p.role).spec.implicit
                if implicit:
                    out.append(GrantInfo(principal=p.name, role=p.role, pattern="**",
                                         effect="role", capabilities=format_capabilities(implicit),
                                         created_by="", created_at=p.created_at))
                out.extend(GrantInfo(principal=p.name, role=p.role, pattern=g.pattern,
                                     effect=g.effect, capabilities=g.capabilities,
                                     created_by=g.created_by, created_at=g.created_at)
                           for g in p.grants)
            return out

    def _principal(self, session: Session, name: str) -> Principal:
        """The principal, checked: a tampered row is never used, nor re-sealed as valid.
        Locked (PostgreSQL), so that two changes to one principal's grants cannot each seal
        a MAC over its own view of them, nor the same generation."""
        principal = session.execute(select(Principal).where(Principal.name == name)
                                    .with_for_update()).scalar_one_or_none()
        if principal is None:
            raise NotFound(f"no principal named {name!r}")
        self._check(session, principal)
        return principal

    def _check(self, session: Session, principal: Principal) -> None:
        check_principal(self._core.keys, session, self._core.vault_id(session), principal)
