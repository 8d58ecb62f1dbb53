"""What the security console and access reviews show: read-only views over the vault's own
tables and audit trail, each one an audited operation (``insight.*``), none of which ever
decrypts a value or returns a token hash.

``inventory`` admits any valid principal and shows only the secrets it may ``list``; every
other view needs ``audit`` on every path (security engineers and auditors hold it by role).

Effective access is always the vault's own decision (:func:`..policy.decide.decide`) over a
principal's role and grants, and a principal whose record fails its integrity MAC reaches
nothing, as the vault would refuse it. The last use of a grant is read from the allowed
records it decided: the vault writes the decision's reason (``grant of inject on ml/**``)
first in every record's reason, followed by ``; …`` for anything the operation adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Generic, TypeVar

from sqlalchemy import and_, or_, select

from airflow_provider_mlsecrets.errors import IntegrityError, InvalidInput
from airflow_provider_mlsecrets.policy.roles import Capability
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service._core import Caller, Core, Op, utcnow
from airflow_provider_mlsecrets.service._integrity import check_secret
from airflow_provider_mlsecrets.store.models import Rotation, RotationStep, Secret, SecretVersion

T = TypeVar("T")

# MLSecretsBackend's default ``team_prefix`` (secrets/backend.py; a test keeps them equal):
# a secret under ``teams/<team>/`` belongs to that team
TEAM_TEMPLATE = "teams/{team}"
# a rotation past due for longer than this is overdue: the rotation DAG runs hourly, so a
# day late means it did not run, or failed, many times
OVERDUE_AFTER = timedelta(days=1)
STATES = ("none", "ok", "due", "overdue", "failed", "in grace", "half done")
SORTS = ("path", "-path", "age", "-age", "due", "owner", "state", "team")
MAX_LIMIT = 500


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a longer answer. ``total`` counts every match (for the audit timeline it
    stops at :data:`AUDIT_COUNT_CAP` + 1: "more than that")."""

    items: list[T]
    total: int
    offset: int
    limit: int


@dataclass(frozen=True)
class SecretRow:
    path: str
    team: str | None
    owner: str | None
    description: str | None
    current_version: int | None
    updated_at: datetime | None
    age_days: float | None  # of the current version's value
    schedule: str | None
    next_due_at: datetime | None
    rotation_state: str  # one of STATES
    deleted: bool
    intact: bool = True  # False: the row fails its integrity MAC (altered in the database)


def team_of(path: str, template: str = TEAM_TEMPLATE) -> str | None:
    """The team whose namespace holds ``path`` (``teams/<team>/…``), else ``None``."""
    parts = template.strip("/").split("/")
    at = parts.index("{team}")
    segments = path.split("/")
    fixed = len(parts)
    if len(segments) <= fixed or segments[:at] != parts[:at] \
            or segments[at + 1:fixed] != parts[at + 1:]:
        return None
    return segments[at]


def team_namespace(team: str, template: str = TEAM_TEMPLATE) -> str:
    return template.strip("/").replace("{team}", team)


def rotation_state(has_policy: bool, state: Any, now: datetime) -> str:
    """Where a secret's rotation stands, from its rotation row (``None`` if it has none):
    ``failed`` (the last run failed; ``last_error`` says why) before ``half done`` (a run
    stopped between steps) before ``overdue`` / ``due`` (a rotation, or the invalidation of
    the previous value after its grace period) before ``in grace`` (the previous value
    still works until ``invalidate_after``) before ``ok``."""
    if not has_policy or state is None or state.next_due_at is None:
        return "none"
    if state.last_result == "failed":
        return "failed"
    if state.step != RotationStep.IDLE.value:
        return "half done"
    due_at = state.next_due_at
    if state.invalidate_after is not None:
        due_at = min(due_at, state.invalidate_after)
    if due_at <= now - OVERDUE_AFTER:
        return "overdue"
    if due_at <= now:
        return "due"
    if state.invalidate_after is not None:
        return "in grace"
    return "ok"


def _check_limit(offset: int, limit: int) -> None:
    if offset < 0:
        raise InvalidInput("offset must be 0 or more")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be from 1 to {MAX_LIMIT}")


def _days(delta: timedelta) -> float:
    return round(delta.total_seconds() / 86400, 3)


_INVENTORY = (select(Secret.id, Secret.path, Secret.owner, Secret.updated_at, Secret.deleted_at,
                     Secret.rotation.is_not(None).label("has_policy"), Rotation.next_due_at,
                     Rotation.step, Rotation.last_result, Rotation.invalidate_after,
                     SecretVersion.created_at.label("current_at"))
              .outerjoin(Rotation, Rotation.secret_id == Secret.id)
              .outerjoin(SecretVersion, and_(SecretVersion.secret_id == Secret.id,
                                             SecretVersion.version == Secret.current_version)))


class InsightService:
    """``vault.insight``: the console's and the access review's read-only views."""

    def __init__(self, core: Core) -> None:
        self._core = core

    # -- inventory ---------------------------------------------------------------------
    def inventory(self, caller: Caller, *, search: str = "", team: str | None = None,
                  state: str | None = None, offset: int = 0, limit: int = 50,
                  sort: str = "path", deleted: bool = False) -> Page[SecretRow]:
        """The secrets the caller may ``list``, filtered (``search`` in path, owner or
        description, any letter case; ``team``; rotation ``state``; ``deleted`` ones too),
        sorted and paged. Each row shown is checked against its integrity MAC."""
        _check_limit(offset, limit)
        if state is not None and state not in STATES:
            raise InvalidInput(f"unknown state {state!r}; states are {', '.join(STATES)}")
        if sort not in SORTS:
            raise InvalidInput(f"unknown sort {sort!r}; sorts are {', '.join(SORTS)}")
        if len(search) > 256:
            raise InvalidInput("search is at most 256 characters")
        query = _INVENTORY
        if search:
            query = query.where(or_(Secret.path.icontains(search, autoescape=True),
                                    Secret.owner.icontains(search, autoescape=True),
                                    Secret.description.icontains(search, autoescape=True)))
        if team:
            query = query.where(Secret.path.startswith(team_namespace(team) + "/",
                                                       autoescape=True))
        if not deleted:
            query = query.where(Secret.deleted_at.is_(None))
        now = utcnow()
        with self._core.operation(caller, "insight.inventory", None) as op:
            rows = []
            for row in op.session.execute(query):
                if not op.actor.may(Capability.LIST, row.path).allowed:
                    continue
                found = rotation_state(row.has_policy, row, now)
                if state is None or found == state:
                    rows.append((row, found))
            rows.sort(key=_sorter(sort, now), reverse=sort == "-path")
            page = rows[offset:offset + limit]
            out = self._secret_rows(op, [r.id for r, _ in page], {r.id: s for r, s in page},
                                    now)
            op.reason += f"; {len(rows)} match, {len(out)} shown"
            return Page(items=out, total=len(rows), offset=offset, limit=limit)

    def _secret_rows(self, op: Op, ids: Sequence[int], states: dict[int, str],
                     now: datetime) -> list[SecretRow]:
        """Full rows for ``ids`` (in that order), each checked against its MAC."""
        if not ids:
            return []
        found = {s.id: (s, r, at) for s, r, at in op.session.execute(
            select(Secret, Rotation, SecretVersion.created_at)
            .outerjoin(Rotation, Rotation.secret_id == Secret.id)
            .outerjoin(SecretVersion, and_(SecretVersion.secret_id == Secret.id,
                                           SecretVersion.version == Secret.current_version))
            .where(Secret.id.in_(ids))).tuples()}
        vault_id = self._core.vault_id(op.session)
        out = []
        for secret_id in ids:
            secret, rotation, current_at = found[secret_id]
            out.append(self._secret_row(secret, rotation, current_at, states[secret_id],
                                        vault_id, now, op))
        return out

    def _secret_row(self, secret: Secret, rotation: Rotation | None,
                    current_at: datetime | None, state: str, vault_id: str, now: datetime,
                    op: Op) -> SecretRow:
        try:
            check_secret(self._core.keys, vault_id, secret)
            intact = True
        except IntegrityError:
            intact = False
            op.reason += f"; {secret.path} altered outside the vault"
        schedule = None
        if secret.rotation is not None:
            try:
                schedule = RotationPolicy.from_json(secret.rotation).schedule
            except (ValueError, KeyError, TypeError, InvalidInput):
                schedule = "<unreadable>"
        return SecretRow(
            path=secret.path, team=team_of(secret.path), owner=secret.owner or None,
            description=secret.description or None, current_version=secret.current_version,
            updated_at=secret.updated_at,
            age_days=_days(now - current_at) if current_at is not None else None,
            schedule=schedule,
            next_due_at=rotation.next_due_at if rotation is not None and schedule else None,
            rotation_state=state, deleted=secret.deleted_at is not None, intact=intact)


_URGENCY = {s: i for i, s in enumerate(("failed", "overdue", "half done", "due", "in grace",
                                        "ok", "none"))}
_LATEST = datetime.max.replace(tzinfo=timezone.utc)


def _sorter(sort: str, now: datetime) -> Any:
    """The sort key of an inventory candidate ``(row, state)``; the path breaks ties."""
    def age(row: Any) -> float:
        return (now - row.current_at).total_seconds() if row.current_at is not None else -1.0

    keys: dict[str, Any] = {
        "path": lambda c: c[0].path,
        "-path": lambda c: c[0].path,  # reversed by the caller
        "age": lambda c: (-age(c[0]), c[0].path),  # oldest first
        "-age": lambda c: (age(c[0]), c[0].path),
        "due": lambda c: (c[0].next_due_at if c[0].has_policy and c[0].next_due_at
                          else _LATEST, c[0].path),
        "owner": lambda c: (c[0].owner or "\uffff", c[0].path),
        "state": lambda c: (_URGENCY[c[1]], c[0].path),
        "team": lambda c: (team_of(c[0].path) or "\uffff", c[0].path),
    }
    return keys[sort]

