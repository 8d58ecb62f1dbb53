"""Break-glass reads: a person's plaintext read says why, and a read of a critical path
needs a second security engineer.

Every ``read`` (plaintext back to a person) carries a justification, kept in its audit
record's context; without one it is refused and recorded as denied. Paths matching the
``critical`` policy need more: the reader asks (``access.request``: path, justification,
window), another security engineer who may read the path approves (``access.approve``) or
denies (``access.deny``), and for the approved window that one principal may read that one
path; each read names the approval. Pipelines' ``inject`` is untouched.

The policy row and every request row carry an HSM-keyed MAC (service/_integrity.py), so
the database's owner can neither approve a request, widen its window, move it to another
path or principal, nor drop a pattern from the policy. The policy row is written by
``init``; once the policy has ever been set, its absence is tampering and reads are refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets.audit.record import Outcome
from airflow_provider_mlsecrets.durations import parse_duration
from airflow_provider_mlsecrets.errors import AccessDenied, IntegrityError, InvalidInput, NotFound
from airflow_provider_mlsecrets.paths import matches, parse_path, parse_pattern
from airflow_provider_mlsecrets.policy.roles import Capability, Role
from airflow_provider_mlsecrets.service._core import Caller, Core, Op, utcnow
from airflow_provider_mlsecrets.service._integrity import (
    access_request_intact,
    check_policy,
    seal_access_request,
    seal_policy,
)
from airflow_provider_mlsecrets.store.models import AccessRequest, AuditRecord, VaultPolicy

CRITICAL = "critical"
MIN_JUSTIFICATION, MAX_JUSTIFICATION = 8, 500
DEFAULT_WINDOW = "15m"
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f\u2028\u2029]+")
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
_PENDING, _APPROVED, _DENIED = "pending", "approved", "denied"
NO_JUSTIFICATION = ("a plaintext read needs a reason: give --reason TEXT (over HTTP, "
                    "\"reason\"), which the audit record keeps")


@dataclass(frozen=True)
class AccessRequestInfo:
    id: str
    principal: str
    path: str
    justification: str
    window_seconds: int
    requested_at: datetime
    state: str  # pending, approved, denied, expired (asked too long ago or window over)
    decided_by: str | None
    decided_at: datetime | None
    expires_at: datetime | None


def parse_justification(text: str | None) -> str:
    """A justification as the audit record keeps it: one line of 8 to 500 characters."""
    text = (text or "").strip()
    if not MIN_JUSTIFICATION <= len(text) <= MAX_JUSTIFICATION or not _PRINTABLE.fullmatch(
            text):
        raise InvalidInput(f"a reason is one line of {MIN_JUSTIFICATION} to "
                           f"{MAX_JUSTIFICATION} printable characters")
    return text


def justification_of(reason: str | None) -> str | None:
    """The reason as the audit record keeps it, or None if it is missing or malformed (the
    read is then refused, and recorded, without keeping the text)."""
    try:
        return parse_justification(reason)
    except InvalidInput:
        return None


def justified(caller: Caller, justification: str | None) -> Caller:
    """``caller`` with its justification in the context its audit record carries."""
    if justification is None:
        return caller
    return dataclasses.replace(caller, context={**caller.context,
                                                "justification": justification})


def authorise_read(core: Core, op: Op, path: str, justification: str | None) -> None:
    """Inside the ``secret.read`` operation: refuse a read without a justification, and a
    read of a critical path without an open approval for this principal and path (naming
    the approval in the record otherwise). Raises :class:`AccessDenied` (recorded as denied)
    or :class:`IntegrityError`."""
    if justification is None:
        raise AccessDenied(NO_JUSTIFICATION)
    patterns = critical_patterns(core, op.session)
    critical = next((p for p in patterns if matches(p, path)), None)
    if critical is None:
        return
    now, vault_id = utcnow(), core.vault_id(op.session)
    rows = op.session.scalars(select(AccessRequest).where(
        AccessRequest.principal == op.actor.name, AccessRequest.path == path,
        AccessRequest.state == _APPROVED)).all()
    for row in rows:
        if row.expires_at is not None and row.expires_at > now:
            if not access_request_intact(core.keys, vault_id, row):
                raise IntegrityError(f"break-glass request {row.id} was altered outside the "
                                     "vault; restore the database from backup")
            op.reason += (f"; break-glass approval {row.id} by {row.decided_by}, open until "
                          f"{row.expires_at.isoformat(timespec='seconds')}")
            return
    raise AccessDenied(
        f"{path} is critical ({critical}): a read needs a second security engineer's "
        f"approval: 'mlsecrets access request {path} --reason TEXT', then another security "
        "engineer runs 'mlsecrets access approve ID'")


def critical_patterns(core: Core, session: Session) -> list[str]:
    row = session.get(VaultPolicy, CRITICAL)
    if row is None:
        raise IntegrityError(
            "the vault has no critical-path policy: run 'mlsecrets init' once after an "
            "upgrade; if it was set before, it was deleted outside the vault (restore the "
            "database from backup)")
    check_policy(core.keys, core.vault_id(session), row)
    patterns = json.loads(row.value)
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise IntegrityError("the critical-path policy is malformed")
    return patterns


def ensure_policy(core: Core, session: Session, by: str) -> bool:
    """Write the empty critical-path policy if the vault has none and never had one (no
    ``policy.critical`` record): a vault created or upgraded now. True if it was written."""
    if session.get(VaultPolicy, CRITICAL) is not None:
        return False
    if session.execute(select(AuditRecord.seq).where(
            AuditRecord.action == "policy.critical",
            AuditRecord.outcome == Outcome.ALLOWED.value).limit(1)).first() is not None:
        return False  # set before and gone since: tampering, which init must not paper over
    _write_policy(core, session, [], by)
    return True


def _write_policy(core: Core, session: Session, patterns: list[str], by: str) -> None:
    row = session.get(VaultPolicy, CRITICAL)
    if row is None:
        row = VaultPolicy(name=CRITICAL)
        session.add(row)
    row.value = json.dumps(sorted(set(patterns)), separators=(",", ":"))
    row.changed_by, row.changed_at = by, utcnow()
    seal_policy(core.keys, core.vault_id(session), row)


class BreakGlassService:
    """The critical-path policy and the request, approve, deny steps."""

    def __init__(self, core: Core) -> None:
        self._core = core

    # -- the policy ------------------------------------------------------------------
    def critical(self, caller: Caller) -> list[str]:
        """The critical path patterns (``audit``: auditors and security engineers)."""
        with self._core.operation(caller, "policy.show_critical", Capability.AUDIT) as op:
            return critical_patterns(self._core, op.session)

    def set_critical(self, caller: Caller, *, add: tuple[str, ...] = (),
                     remove: tuple[str, ...] = ()) -> list[str]:
        """Add or remove critical patterns (``grant``); the new list."""
        added, removed = [parse_pattern(p) for p in add], [parse_pattern(p) for p in remove]
        if not added and not removed:
            raise InvalidInput("give a pattern to add or to remove")
        with self._core.operation(caller, "policy.critical", Capability.GRANT) as op:
            # one change at a time (PostgreSQL): two would each write their own list, and
            # the same generation
            op.session.get(VaultPolicy, CRITICAL, with_for_update=True)
            patterns = critical_patterns(self._core, op.session)
            unknown = [p for p in removed if p not in patterns]
            if unknown:
                raise NotFound(f"not a critical pattern: {', '.join(unknown)}")
            patterns = sorted((set(patterns) | set(added)) - set(removed))
            _write_policy(self._core, op.session, patterns, op.actor.name)
            op.reason += "; " + "; ".join([*(f"added {p}" for p in added),
                                           *(f"removed {p}" for p in removed)])
            return patterns

    # -- requests ----------------------------------------------------------------------
    def request(self, caller: Caller, path: str, reason: str,
                window: str = DEFAULT_WINDOW) -> AccessRequestInfo:
        """Ask to read a critical ``path`` for ``window`` (``read`` on the path)."""
        path, justification = parse_path(path), parse_justification(reason)
        length = parse_duration(window)
        longest = parse_duration(self._core.settings.break_glass_max_window)
        if length > longest:
            raise InvalidInput(f"a read window is at most "
                               f"{self._core.settings.break_glass_max_window} "
                               "(MLSECRETS_BREAK_GLASS_MAX_WINDOW)")
        with self._core.operation(justified(caller, justification), "access.request",
                                  Capability.READ, path) as op:
            if not any(matches(p, path) for p in critical_patterns(self._core, op.session)):
                raise InvalidInput(f"{path} is not critical: read it with 'mlsecrets secret "
                                   f"get {path} --reason TEXT'")
            row = AccessRequest(id=uuid.uuid4().hex, principal=op.actor.name, path=path,
                                justification=justification,
                                window_seconds=int(length.total_seconds()),
                                requested_at=utcnow(), state=_PENDING)
            op.session.add(row)
            seal_access_request(self._core.keys, self._core.vault_id(op.session), row)
            op.reason += f"; request {row.id} for {window}"
            return self._info(row)

    def approve(self, caller: Caller, request_id: str) -> AccessRequestInfo:
        """Open the request's read window (``read`` on its path, and not its requester)."""
        return self._decide(caller, request_id, approve=True)

    def deny(self, caller: Caller, request_id: str) -> AccessRequestInfo:
        """Close a pending request (``read`` on its path; its requester may withdraw it)."""
        return self._decide(caller, request_id, approve=False)

    def requests(self, caller: Caller, *, open_only: bool = False) -> list[AccessRequestInfo]:
        """Requests, newest first (``audit``); ``open_only``: pending and open windows."""
        with self._core.operation(caller, "access.list", Capability.AUDIT) as op:
            rows = op.session.scalars(select(AccessRequest).order_by(
                AccessRequest.requested_at.desc()).limit(1000)).all()
            vault_id = self._core.vault_id(op.session)
            out = [self._info(r) if access_request_intact(self._core.keys, vault_id, r)
                   else dataclasses.replace(self._info(r), state="altered") for r in rows]
            if open_only:
                out = [r for r in out if r.state in (_PENDING, _APPROVED)]
            op.reason += f"; {len(out)} shown"
            return out

    def _decide(self, caller: Caller, request_id: str, *, approve: bool) -> AccessRequestInfo:
        if not _REQUEST_ID.fullmatch(request_id):
            raise InvalidInput("a request id is 32 hexadecimal digits (mlsecrets access list)")
        action = "access.approve" if approve else "access.deny"
        path = self._path_of(request_id)
        with self._core.operation(caller, action, Capability.READ, path) as op:
            row = op.session.get(AccessRequest, request_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no break-glass request {request_id}")
            if not access_request_intact(self._core.keys, self._core.vault_id(op.session),
                                         row):
                raise IntegrityError(f"break-glass request {request_id} was altered outside "
                                     "the vault; restore the database from backup")
            if row.path != path:  # moved since it was authorised: altered, as above
                raise IntegrityError(f"break-glass request {request_id} changed path")
            op.reason += f"; request {row.id} of {row.principal}"
            if self._state(row) != _PENDING:
                raise InvalidInput(f"request {request_id} is {self._state(row)}, not pending")
            if approve and (row.principal == op.actor.name
                            or op.actor.role is not Role.SECURITY_ENGINEER):
                raise AccessDenied("a break-glass request is approved by another security "
                                   "engineer, never by the one who asked")
            row.state = _APPROVED if approve else _DENIED
            row.decided_by, row.decided_at = op.actor.name, utcnow()
            if approve:
                row.expires_at = row.decided_at + timedelta(seconds=row.window_seconds)
                op.reason += f", open until {row.expires_at.isoformat(timespec='seconds')}"
            seal_access_request(self._core.keys, self._core.vault_id(op.session), row)
            return self._info(row)

    def _path_of(self, request_id: str) -> str | None:
        """The request's path, so the operation is authorised on it (an unknown id is
        authorised path-less and then answers "not found")."""
        with self._core.transaction() as session:
            return session.execute(select(AccessRequest.path).where(
                AccessRequest.id == request_id)).scalar_one_or_none()

    def _state(self, row: AccessRequest) -> str:
        now = utcnow()
        if row.state == _PENDING and row.requested_at + parse_duration(
                self._core.settings.break_glass_request_ttl) <= now:
            return "expired"
        if row.state == _APPROVED and (row.expires_at is None or row.expires_at <= now):
            return "expired"
        return row.state

    def _info(self, row: AccessRequest) -> AccessRequestInfo:
        return AccessRequestInfo(
            id=row.id, principal=row.principal, path=row.path,
            justification=row.justification, window_seconds=row.window_seconds,
            requested_at=row.requested_at, state=self._state(row), decided_by=row.decided_by,
            decided_at=row.decided_at, expires_at=row.expires_at)
