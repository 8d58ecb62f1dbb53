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

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from croniter import croniter
from sqlalchemy import and_, bindparam, func, or_, select, text, tuple_
from sqlalchemy.orm import Session, selectinload

from airflow_provider_mlsecrets.audit import mark as hsm_mark
from airflow_provider_mlsecrets.audit.record import Outcome, format_ts
from airflow_provider_mlsecrets.errors import IntegrityError, InvalidInput, NotFound
from airflow_provider_mlsecrets.paths import matches, parse_path
from airflow_provider_mlsecrets.policy.decide import Rule, decide
from airflow_provider_mlsecrets.policy.roles import Capability, Role, parse_capabilities
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service._core import Caller, Core, Op, utcnow
from airflow_provider_mlsecrets.service._integrity import check_secret, principal_intact
from airflow_provider_mlsecrets.service.access import PrincipalInfo
from airflow_provider_mlsecrets.service.audit import AuditFilter, AuditView
from airflow_provider_mlsecrets.service.audit import _view as audit_view
from airflow_provider_mlsecrets.service.rotation import RotationStatus
from airflow_provider_mlsecrets.service.rotation import _status as rotation_status
from airflow_provider_mlsecrets.service.secrets import VersionInfo
from airflow_provider_mlsecrets.store.models import (
    AuditAnchor,
    AuditHead,
    AuditRecord,
    Grant,
    Kek,
    KeyState,
    Principal,
    Rotation,
    RotationStep,
    Secret,
    SecretVersion,
    dag_of,
    decision_of,
)

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.review.service import MadeReview, ReviewCheck
    from airflow_provider_mlsecrets.service.vault import KeyView  # vault.py imports this module

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
MAX_EXPORT = 100_000
DEFAULT_WINDOW = timedelta(days=90)
BUCKETS = {"hour": (13, timedelta(hours=1)), "day": (10, timedelta(days=1))}  # ts[:width]
MAX_BUCKETS = 5000


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a longer answer. ``total`` counts every match (for the audit timeline it
    stops at :data:`AUDIT_COUNT_CAP` + 1: "more than that")."""

    items: list[T]
    total: int
    offset: int
    limit: int
    next_before: tuple[int, int] | None = None  # the audit timeline's next page, if any


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


@dataclass(frozen=True)
class Reach:
    """One principal's effective access to one path, as the vault decides it."""

    principal: str
    role: str
    status: str  # active | revoked | expired | altered (the vault refuses all but active)
    allowed: tuple[str, ...]  # capabilities the decision allows on this path
    denied: tuple[str, ...]  # capabilities an explicit deny refuses on this path
    via: tuple[str, ...]  # the decision's reasons ("grant of inject on ml/**", "role auditor")
    kind: str  # dag | airflow-user | airflow-role | team | principal
    note: str = ""  # what else limits it (a team's namespace, for Airflow lookups)


@dataclass(frozen=True)
class AccessEvent:
    """An audit record as the console shows it (its context reduced to the task)."""

    ts: str
    principal: str
    action: str
    outcome: str
    path: str
    dag_id: str | None
    task_id: str | None
    reason: str
    chain: int
    seq: int
    version: int | None = None
    run_id: str | None = None
    component: str | None = None
    justification: str | None = None  # a person's reason for a read (break-glass.md)


@dataclass(frozen=True)
class SecretDetail:
    secret: SecretRow
    versions: list[VersionInfo]
    reach: list[Reach]
    recent: list[AccessEvent]  # newest first, every action on this path
    rotations: list[AccessEvent]  # rotation.* records of this path, newest first
    rotation: RotationStatus | None = None


@dataclass(frozen=True)
class GrantUse:
    pattern: str
    effect: str
    capabilities: str
    created_at: datetime
    last_used_at: datetime | None  # the newest record this grant decided, in the window
    uses: int  # records this grant decided in the window (allowed; for a deny: denied)
    unused: bool = False  # an allow grant that decided nothing in the window


@dataclass(frozen=True)
class PrincipalRow:
    name: str
    role: str
    status: str
    kind: str
    grants: int
    unused_grants: int
    last_seen_at: datetime | None  # the newest record naming it, any outcome, ever
    created_at: datetime | None = None
    last_used_at: datetime | None = None  # the newest allowed record in the window


@dataclass(frozen=True)
class PrincipalDetail:
    row: PrincipalRow
    grants: list[GrantUse]
    reach: list[tuple[str, tuple[str, ...]]]  # (path, allowed capabilities), existing secrets
    reach_total: int = 0  # secrets it reaches (``reach`` may stop earlier)


@dataclass(frozen=True)
class RotationRow:
    status: RotationStatus
    state: str  # as SecretRow.rotation_state
    intact: bool = True


@dataclass(frozen=True)
class KeyRow:
    key: KeyView
    wraps: int  # live data keys wrapped by this KEK
    pending_rewrap: int  # of those, still to be re-wrapped (under a retired KEK)


@dataclass(frozen=True)
class Bucket:
    start: datetime
    allowed: int
    denied: int


VIEWS = ("overview", "inventory", "principals", "rotation", "audit", "keys",  # the console's
         "alerts")


@dataclass(frozen=True)
class Me:
    """Who the caller is to the vault and which console views it may open."""

    principal: str
    role: str
    audit: bool  # ``audit`` on every path: every view, a secret's page, the access review
    views: tuple[str, ...]  # without ``audit``, only the inventory (filtered by ``list``)


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


# -- who is who, and what they reach ----------------------------------------------------------
_KINDS = (("dag:", "dag"), ("airflow-user:", "airflow-user"), ("airflow-role:", "airflow-role"),
          ("team:", "team"))


def kind_of(name: str) -> str:
    """What sort of principal a name is: a DAG's (``dag:ID``), an Airflow user's or role's
    binding, a team's (multi-team Airflow), or a principal with a token of its own."""
    for prefix, kind in _KINDS:
        if name.startswith(prefix):
            return kind
    return "principal"


def rules_of(grants: Iterable[Any]) -> tuple[Rule, ...]:
    """A principal's grants as the decision reads them (as ``Core`` builds its actor)."""
    return tuple(Rule(pattern=g.pattern, capabilities=parse_capabilities([g.capabilities]),
                      deny=g.effect == "deny") for g in grants)


Access = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # allowed, denied, via


def access_to(role: Role, rules: Sequence[Rule], path: str) -> Access:
    """Every capability decided on ``path`` by :func:`decide`: those allowed, those an
    explicit deny refuses, and the reasons of the allowed ones."""
    allowed, denied, via = [], [], []
    for capability in Capability:
        decision = decide(role, tuple(rules), capability, path)
        if decision.allowed:
            allowed.append(capability.value)
            if decision.reason not in via:
                via.append(decision.reason)
        elif decision.reason.startswith("explicit deny"):
            denied.append(capability.value)
    return tuple(allowed), tuple(denied), tuple(via)


def effective(role: Role, rules: Sequence[Rule], paths: Iterable[str]) -> dict[str, Access]:
    """:func:`access_to` for many paths. The decision reads a path only through which rules'
    patterns match it, so paths matched by the same rules get the same answer: it is asked
    once per distinct set of matching rules, not once per path (a test checks that this
    agrees with asking for every path)."""
    memo: dict[tuple[bool, ...], Access] = {}
    out = {}
    for path in paths:
        key = tuple(matches(r.pattern, path) for r in rules)
        found = memo.get(key)
        if found is None:
            found = memo[key] = access_to(role, rules, path)
        out[path] = found
    return out


class Decided:
    """Whether :func:`decide` allows one capability, path by path, asked once per distinct
    set of matching rules (as :func:`effective` does)."""

    def __init__(self, role: Role, rules: Sequence[Rule], capability: Capability) -> None:
        self._role, self._rules, self._capability = role, tuple(rules), capability
        self._memo: dict[tuple[bool, ...], bool] = {}

    def __call__(self, path: str) -> bool:
        key = tuple(matches(r.pattern, path) for r in self._rules)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = decide(self._role, self._rules, self._capability,
                                             path).allowed
        return found


def team_note(name: str, kind: str, path: str) -> str:
    """What the secrets backend's team namespaces add for Airflow lookups of ``path``."""
    team = team_of(path)
    if team is None:
        return ""
    if kind == "team" and name != f"team:{team}":
        return f"Airflow lookups as {name} never reach team {team}'s namespace"
    if kind == "dag":
        return f"through Airflow, only while the DAG runs as a task of team {team}"
    return ""


decision_expr = decision_of(AuditRecord.reason)
dag_expr = dag_of(AuditRecord.context)
ROTATION_ACTIONS = ("rotation.policy", "rotation.begin", "rotation.create", "rotation.set",
                    "rotation.test", "rotation.finish", "rotation.invalidate", "rotation.end",
                    "rotation.fail", "rotation.cancel")
NEWEST_FIRST = (AuditRecord.ts.desc(), AuditRecord.chain.desc(), AuditRecord.seq.desc())
AUDIT_COUNT_CAP = 1_000
_BYTEWISE: dict[str, bool] = {}  # database URL -> whether it orders text byte by byte
AUTHENTICATED = "authenticated"  # the decision of an action that needs no capability (Core)


def event(record: Any) -> AccessEvent:
    try:
        context = json.loads(record.context)
    except (ValueError, RecursionError):
        context = {}
    if not isinstance(context, dict):
        context = {}

    def text(key: str) -> str | None:
        value = context.get(key)
        return None if value is None else str(value)

    return AccessEvent(ts=record.ts, principal=record.principal, action=record.action,
                       outcome=record.outcome, path=record.path, dag_id=text("dag_id"),
                       task_id=text("task_id"), reason=record.reason, chain=record.chain,
                       seq=record.seq, version=record.version, run_id=text("run_id"),
                       component=text("component"), justification=text("justification"))


def parse_ts(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Subject:
    """A principal as the views need it."""

    name: str
    role: str
    status: str
    kind: str
    rules: tuple[Rule, ...]
    grants: tuple[Grant, ...]
    created_at: datetime


def grant_decisions(grant: Any) -> tuple[str, tuple[str, ...]]:
    """The outcome and the decision reasons (as :func:`decide` words them) of the records a
    grant decides: an allow grant's allowed records, a deny grant's denials."""
    caps = sorted(parse_capabilities([grant.capabilities]), key=lambda c: c.value)
    if grant.effect == "deny":
        reasons = [f"explicit deny of {c.value} on {grant.pattern}" for c in caps]
        return Outcome.DENIED.value, tuple(
            reasons + [f"{r} (this action reaches every path)" for r in reasons])
    return Outcome.ALLOWED.value, tuple(f"grant of {c.value} on {grant.pattern}" for c in caps)


def _window(since: datetime | None, now: datetime) -> datetime:
    if since is None:
        return now - DEFAULT_WINDOW
    if since.tzinfo is None:
        raise InvalidInput("since needs a time zone")
    return since.astimezone(timezone.utc)


def _floor(moment: datetime, bucket: str) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


@lru_cache(maxsize=256)
def _schedule_days(schedule: str) -> float | None:
    try:
        policy = RotationPolicy(schedule=schedule, rotator="random")
    except InvalidInput:
        return None
    interval = policy.interval
    if interval is None:
        runs = croniter(schedule, datetime(2026, 1, 1, tzinfo=timezone.utc))
        first = runs.get_next(datetime)
        interval = runs.get_next(datetime) - first
    return _days(interval)


def _interval_days(rotation: str | None) -> float | None:
    if rotation is None:
        return None
    try:
        return _schedule_days(json.loads(rotation)["schedule"])
    except (ValueError, KeyError, TypeError):
        return None


def _newest(session: Session, seeks: Sequence[tuple[str, str | None, str | None, str]]
            ) -> list[str | None]:
    """For each ``(principal, outcome, decision, since)``, the time of its newest record
    (``outcome`` and ``decision`` None: any record): one seek each, of the (principal,
    outcome, decision, ts) or the (principal, ts) index. On PostgreSQL all of them go in
    one statement (a round trip each would cost more than the seeks); on SQLite, in this
    process, by statements compiled once."""
    connection = session.connection()
    if connection.dialect.name == "postgresql" and seeks:
        rows = connection.execute(_PG_NEWEST, {
            "p": [s[0] for s in seeks], "o": [s[1] or "" for s in seeks],
            "d": [s[2] or "" for s in seeks], "s": [s[3] for s in seeks],
            "any": [s[1] is None or s[2] is None for s in seeks]}).all()
        found: dict[int, Any] = {int(n): t for n, t in rows}
        return [None if found.get(i) is None else str(found[i])
                for i in range(1, len(seeks) + 1)]
    out: list[str | None] = []
    for name, outcome, decision, since in seeks:
        if outcome is None or decision is None:
            newest = connection.execute(_SEEN, {"p": name}).scalar()
        else:
            newest = connection.execute(_DECIDED, {"p": name, "o": outcome, "d": decision,
                                                   "s": since}).scalar()
        out.append(None if newest is None else str(newest))
    return out


# the same seeks as _DECIDED and _SEEN, over arrays (WITH ORDINALITY numbers them from 1)
_PG_NEWEST = text(
    "SELECT q.n, CASE WHEN q.any_record THEN (SELECT max(a.ts) FROM mlsecrets_audit a "
    "WHERE a.principal = q.p) ELSE (SELECT max(a.ts) FROM mlsecrets_audit a WHERE "
    "a.principal = q.p AND a.outcome = q.o AND "
    "split_part(a.reason, ';', 1) = q.d AND a.ts >= q.s) END "  # decision_sql's
    "FROM unnest(CAST(:p AS text[]), CAST(:o AS text[]), CAST(:d AS text[]), "
    "CAST(:s AS text[]), CAST(:any AS boolean[])) WITH ORDINALITY "
    "AS q(p, o, d, s, any_record, n)")
_DECIDED = select(func.max(AuditRecord.ts)).where(
    AuditRecord.principal == bindparam("p"), AuditRecord.outcome == bindparam("o"),
    decision_expr == bindparam("d"), AuditRecord.ts >= bindparam("s"))
_SEEN = select(func.max(AuditRecord.ts)).where(AuditRecord.principal == bindparam("p"))

def _prefix_range(prefix: str | None) -> tuple[str, str] | None:
    """``[prefix, next)``: exactly the strings that start with ``prefix``, compared byte by
    byte (UTF-8 keeps code point order)."""
    if not prefix or ord(prefix[-1]) >= 0x10FFFF:
        return None
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


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

    # -- who is asking ------------------------------------------------------------------
    def me(self, caller: Caller) -> Me:
        """The caller's principal and the console views it may open, decided as those views
        decide (``audit`` on every path), so the console opens on what the caller may see
        instead of on refusals; any authenticated principal may ask, and nothing is denied
        to find out."""
        with self._core.operation(caller, "insight.me", None) as op:
            audit = op.actor.may(Capability.AUDIT, None).allowed
            op.reason += f"; audit: {'yes' if audit else 'no'}"
            return Me(principal=op.actor.name, role=op.actor.role.value, audit=audit,
                      views=VIEWS if audit else ("inventory",))

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
            may_list = Decided(op.actor.role, op.actor.rules, Capability.LIST)
            for row in op.session.execute(query):
                if not may_list(row.path):
                    continue
                found = rotation_state(row.has_policy, row, now)
                if state is None or found == state:
                    rows.append((row, found))
            rows.sort(key=_sorter(sort, now), reverse=sort == "-path")
            page = rows[offset:offset + limit]
            out = self.secret_rows(op, [r.id for r, _ in page], {r.id: s for r, s in page},
                                    now)
            op.reason += f"; {len(rows)} match, {len(out)} shown"
            return Page(items=out, total=len(rows), offset=offset, limit=limit)

    # -- one secret ----------------------------------------------------------------------
    def secret(self, caller: Caller, path: str, *, recent: int = 50) -> SecretDetail:
        """One secret: its row, versions, who can reach it, who did (the newest ``recent``
        records of its path) and its rotation history."""
        path = parse_path(path)
        if not 1 <= recent <= MAX_LIMIT:
            raise InvalidInput(f"recent must be from 1 to {MAX_LIMIT}")
        now = utcnow()
        with self._core.operation(caller, "insight.secret", Capability.AUDIT) as op:
            op.reason += f"; {path}"
            s = op.session
            found = s.execute(select(Secret, Rotation).outerjoin(
                Rotation, Rotation.secret_id == Secret.id).where(Secret.path == path)).first()
            if found is None:
                raise NotFound(f"no secret at {path}")
            secret, state = found
            row = self.secret_rows(op, [secret.id], {
                secret.id: rotation_state(secret.rotation is not None, state, now)}, now)[0]
            versions = [VersionInfo(path=path, version=v.version, state=v.state,
                                    kek_id=v.kek_id, created_by=v.created_by,
                                    created_at=v.created_at, destroyed_at=v.destroyed_at)
                        for v in s.scalars(select(SecretVersion).where(
                            SecretVersion.secret_id == secret.id).order_by(
                            SecretVersion.version.desc()))]
            reach = self._reach(s, path)
            history = [event(r) for r in s.execute(
                select(AuditRecord).where(AuditRecord.path == path)
                .order_by(*NEWEST_FIRST).limit(recent)).scalars()]
            rotations = [event(r) for r in s.execute(
                select(AuditRecord).where(AuditRecord.action.in_(ROTATION_ACTIONS),
                                          AuditRecord.path == path)
                .order_by(*NEWEST_FIRST).limit(recent)).scalars()]
            status = None
            if secret.rotation is not None and state is not None and row.intact:
                status = rotation_status(secret, state)
            return SecretDetail(secret=row, versions=versions, reach=reach, recent=history,
                                rotations=rotations, rotation=status)

    def _reach(self, session: Session, path: str) -> list[Reach]:
        out = []
        for who in self.principals_in(session):
            if who.status == "altered":
                out.append(Reach(principal=who.name, role=who.role, status=who.status,
                                 allowed=(), denied=(), via=("record altered outside the "
                                                             "vault: the vault refuses it",),
                                 kind=who.kind))
                continue
            if who.status != "active":
                continue
            allowed, denied, via = access_to(Role(who.role), who.rules, path)
            if allowed or denied:
                out.append(Reach(principal=who.name, role=who.role, status=who.status,
                                 allowed=allowed, denied=denied, via=via, kind=who.kind,
                                 note=team_note(who.name, who.kind, path) if allowed else ""))
        return out

    # -- principals ----------------------------------------------------------------------
    def principals(self, caller: Caller, *, since: datetime | None = None
                   ) -> list[PrincipalRow]:
        """Every principal: its grants, how many decided nothing since ``since`` (default
        90 days ago), when it was last seen in the trail."""
        now = utcnow()
        since = _window(since, now)
        with self._core.operation(caller, "insight.principals", Capability.AUDIT) as op:
            who = self.principals_in(op.session)
            out = self.principal_rows(op.session, who, since)
            op.reason += f"; {len(out)} principals since {format_ts(since)}"
            return out

    def principal(self, caller: Caller, name: str, *, since: datetime | None = None,
                  reach_limit: int = 1000) -> PrincipalDetail:
        """One principal: each grant with its last use and uses since ``since``, and the
        secrets it reaches (at most ``reach_limit`` of them, by path)."""
        if not 0 <= reach_limit <= 100_000:
            raise InvalidInput("reach_limit must be from 0 to 100000")
        now = utcnow()
        since = _window(since, now)
        with self._core.operation(caller, "insight.principal", Capability.AUDIT) as op:
            op.reason += f"; {name}"
            found = self.principals_in(op.session, name)
            if not found:
                raise NotFound(f"no principal named {name!r}")
            who = found[0]
            uses = self.grant_uses(op.session, who, since)
            reach: list[tuple[str, tuple[str, ...]]] = []
            if who.status == "active":
                paths = op.session.scalars(select(Secret.path).where(
                    Secret.deleted_at.is_(None)).order_by(Secret.path)).all()
                reach = [(p, a[0]) for p, a in effective(Role(who.role), who.rules,
                                                         paths).items() if a[0]]
            return PrincipalDetail(row=self.principal_rows(op.session, [who], since, [uses])[0],
                                   grants=uses, reach=reach[:reach_limit],
                                   reach_total=len(reach))

    def principals_in(self, session: Session, name: str | None = None) -> list[Subject]:
        """Principals with their grants and status; one whose record fails its integrity
        MAC is ``altered`` and reaches nothing (the vault refuses it)."""
        query = select(Principal).options(selectinload(Principal.grants)).order_by(
            Principal.name)
        if name is not None:
            query = query.where(Principal.name == name)
        vault_id = self._core.vault_id(session)
        out = []
        for p in session.scalars(query):
            intact = principal_intact(self._core.keys, vault_id, p, p.grants)
            status = "altered" if not intact else PrincipalInfo(
                name=p.name, role=p.role, created_by=p.created_by, created_at=p.created_at,
                expires_at=p.expires_at, revoked_at=p.revoked_at).status
            try:
                role = Role(p.role)
                rules = rules_of(p.grants)
            except (ValueError, InvalidInput):  # only a tampered row holds these
                status, role, rules = "altered", Role.VIEWER, ()
            out.append(Subject(name=p.name, role=role.value if status != "altered" else p.role,
                            status=status, kind=kind_of(p.name), rules=rules,
                            grants=tuple(p.grants), created_at=p.created_at))
        return out

    def grant_uses(self, session: Session, who: Subject, since: datetime) -> list[GrantUse]:
        """Each grant's last use and uses, from the records it decided since the later of
        ``since`` and its own creation (a range of the (principal, outcome, decision, ts)
        index per grant)."""
        out = []
        for grant in who.grants:
            outcome, decisions = grant_decisions(grant)
            newest, n = session.execute(select(func.max(AuditRecord.ts), func.count()).where(
                AuditRecord.principal == who.name, AuditRecord.outcome == outcome,
                decision_expr.in_(decisions),
                AuditRecord.ts >= format_ts(max(since, grant.created_at)))).one()
            out.append(GrantUse(pattern=grant.pattern, effect=grant.effect,
                                capabilities=grant.capabilities, created_at=grant.created_at,
                                last_used_at=parse_ts(newest), uses=int(n),
                                unused=grant.effect == "allow" and newest is None))
        return out

    def principal_rows(self, session: Session, principals: Sequence[Subject],
                       since: datetime, uses: Sequence[list[GrantUse]] | None = None
                       ) -> list[PrincipalRow]:
        """Each principal's row: its grants and how many decided nothing since ``since``,
        when it last did anything allowed in the window (by a grant, its role, or, for what
        needs no capability, authentication alone) and when it was last seen at all. Every
        figure is one seek of an index, sent many to a statement; given ``uses`` (from
        :meth:`grant_uses`), the grants' are taken from there."""
        start, allowed = format_ts(since), Outcome.ALLOWED.value
        seeks: list[tuple[str, str | None, str | None, str]] = []
        for who in principals:
            if uses is None:
                for grant in who.grants:
                    outcome, decisions = grant_decisions(grant)
                    later = format_ts(max(since, grant.created_at))
                    seeks += [(who.name, outcome, d, later) for d in decisions]
            seeks += [(who.name, allowed, f"role {who.role}", start),
                      (who.name, allowed, AUTHENTICATED, start), (who.name, None, None, "")]
        found = iter(_newest(session, seeks))
        out = []
        for i, who in enumerate(principals):
            if uses is None:
                grants = []
                for grant in who.grants:
                    _, decisions = grant_decisions(grant)
                    last = max((t for t in (next(found) for _ in decisions) if t),
                               default=None)
                    grants.append(GrantUse(
                        pattern=grant.pattern, effect=grant.effect,
                        capabilities=grant.capabilities, created_at=grant.created_at,
                        last_used_at=parse_ts(last), uses=int(last is not None),
                        unused=grant.effect == "allow" and last is None))
            else:
                grants = uses[i]
            by_role, by_authentication, seen = next(found), next(found), next(found)
            used = [u.last_used_at for u in grants if u.effect == "allow" and u.last_used_at]
            used += [t for t in (parse_ts(by_role), parse_ts(by_authentication)) if t]
            out.append(PrincipalRow(
                name=who.name, role=who.role, status=who.status, kind=who.kind,
                grants=len(grants), unused_grants=sum(u.unused for u in grants),
                last_seen_at=parse_ts(seen), created_at=who.created_at,
                last_used_at=max(used, default=None)))
        return out

    # -- rotation ------------------------------------------------------------------------
    def rotation(self, caller: Caller) -> list[RotationRow]:
        """Every secret under a rotation policy, most urgent first: failed (with the
        reason), overdue, half done, due, in grace, ok."""
        now = utcnow()
        with self._core.operation(caller, "insight.rotation", Capability.AUDIT) as op:
            vault_id = self._core.vault_id(op.session)
            out = []
            for secret, state in op.session.execute(
                    select(Secret, Rotation).join(Rotation, Rotation.secret_id == Secret.id)
                    .where(Secret.rotation.is_not(None))).tuples():
                try:
                    check_secret(self._core.keys, vault_id, secret)
                    intact = True
                except IntegrityError:
                    intact = False
                    op.reason += f"; {secret.path} altered outside the vault"
                try:
                    status = rotation_status(secret, state)
                except (ValueError, KeyError, TypeError, InvalidInput):
                    continue  # an unreadable policy: only an altered row has one (noted)
                out.append(RotationRow(status=status, intact=intact,
                                       state=rotation_state(True, state, now)))
            out.sort(key=lambda r: (_URGENCY[r.state], r.status.next_due_at, r.status.path))
            op.reason += f"; {len(out)} shown"
            return out

    # -- the audit trail -----------------------------------------------------------------
    def audit(self, caller: Caller, filters: AuditFilter, *, dag_id: str | None = None,
              before: tuple[int, int] | None = None, limit: int = 100) -> Page[AccessEvent]:
        """Matching records, newest first, ``limit`` at a time: the next page is the one
        ``before`` the last record's ``(chain, seq)`` (``Page.next_before``). Keyset paging:
        no page costs more than its own rows, however deep."""
        _check_limit(0, limit)
        with self._core.operation(caller, "insight.audit", Capability.AUDIT) as op:
            query = self._filtered(filters, dag_id)
            # a path prefix as a range the (path, ts) index serves, where the database
            # compares text byte by byte (SQLite; PostgreSQL in a C locale): the count then
            # costs what matches, and a prefix with few records pages through them alone,
            # instead of walking the whole trail by time (LIKE never uses an index here)
            span = _prefix_range(filters.path_prefix) \
                if filters.path_prefix and self._bytewise(op.session) else None
            ranged = query if span is None else query.where(
                AuditRecord.path >= span[0], AuditRecord.path < span[1])
            total = int(op.session.execute(select(func.count()).select_from(
                ranged.with_only_columns(AuditRecord.chain).limit(AUDIT_COUNT_CAP + 1)
                .subquery())).scalar_one())
            if total <= AUDIT_COUNT_CAP:
                query = ranged
            if before is not None:
                ts = op.session.execute(select(AuditRecord.ts).where(
                    AuditRecord.chain == before[0], AuditRecord.seq == before[1])
                ).scalar_one_or_none()
                if ts is None:
                    raise InvalidInput(f"no audit record {before[0]}/{before[1]} to page from")
                query = query.where(tuple_(AuditRecord.ts, AuditRecord.chain, AuditRecord.seq)
                                    < tuple_(ts, before[0], before[1]))
            items = [event(r) for r in op.session.scalars(
                query.order_by(*NEWEST_FIRST).limit(limit))]
            op.reason += f"; {len(items)} shown"
            return Page(items=items, total=total, offset=0, limit=limit,
                        next_before=(items[-1].chain, items[-1].seq)
                        if len(items) == limit else None)

    def _bytewise(self, session: Session) -> bool:
        """Whether the store orders text byte by byte: SQLite's BINARY; PostgreSQL when the
        database's collation is C or POSIX (C.UTF-8 too: code point order, as UTF-8's)."""
        key = self._core.settings.db_url
        found = _BYTEWISE.get(key)
        if found is None:
            connection = session.connection()
            if connection.dialect.name == "sqlite":
                found = True
            else:
                collation = connection.execute(text(
                    "SELECT datcollate FROM pg_database WHERE datname = current_database()"
                )).scalar_one_or_none()
                found = str(collation or "").lower() in ("c", "posix", "c.utf-8", "c.utf8")
            _BYTEWISE[key] = found
        return found

    def audit_export(self, caller: Caller, filters: AuditFilter, *, dag_id: str | None = None,
                     limit: int = MAX_EXPORT) -> list[AuditView]:
        """Matching records, oldest first, at most ``limit`` of them, whole (context, request
        id, hash) as ``audit export`` writes them."""
        if not 1 <= limit <= MAX_EXPORT:
            raise InvalidInput(f"an export holds 1 to {MAX_EXPORT} records")
        with self._core.operation(caller, "insight.audit", Capability.AUDIT) as op:
            rows = [audit_view(r) for r in op.session.scalars(
                self._filtered(filters, dag_id).order_by(
                    AuditRecord.ts, AuditRecord.chain, AuditRecord.seq).limit(limit))]
            op.reason += f"; exported {len(rows)} records"
            return rows

    @staticmethod
    def _filtered(filters: AuditFilter, dag_id: str | None) -> Any:
        query = filters.apply(select(AuditRecord))
        if dag_id is not None:
            query = query.where(dag_expr.is_not(None), dag_expr == dag_id)
        return query

    def audit_health(self, caller: Caller) -> dict[str, Any]:
        """Each chain's head and the HSM's high-water mark of it, where pruned chains now
        start, and the last verification with its result."""
        with self._core.operation(caller, "insight.audit_health", Capability.AUDIT) as op:
            s = op.session
            vault_id = self._core.vault_id(s)
            anchors = {a.chain: a for a in s.scalars(select(AuditAnchor).order_by(
                AuditAnchor.seq))}
            chains = []
            for head in s.scalars(select(AuditHead).order_by(AuditHead.chain)):
                mark = hsm_mark.read(self._core.keys, vault_id, head.chain)
                anchor = anchors.get(head.chain)
                chains.append({
                    "chain": head.chain, "seq": head.seq, "hash": head.hash.hex(),
                    "starts_after": anchor.seq if anchor is not None else 0,
                    "pruned_at": anchor.pruned_at if anchor is not None else None,
                    "records": head.seq - (anchor.seq if anchor is not None else 0),
                    "mark": None if mark is None else {
                        "seq": mark.seq, "hash": mark.hash.hex(), "at": mark.at,
                        "generation": mark.generation},
                    "unmarked": head.seq - (mark.seq if mark is not None else 0)})
            last = s.scalars(select(AuditRecord).where(AuditRecord.action == "audit.verify")
                             .order_by(*NEWEST_FIRST).limit(1)).first()
            verified = None if last is None else {
                "ts": last.ts, "principal": last.principal, "outcome": last.outcome,
                "reason": last.reason, "chain": last.chain, "seq": last.seq,
                "ok": last.outcome == Outcome.ALLOWED.value and "; ok," in last.reason}
            return {"vault_id": vault_id, "chains": chains,
                    "records": sum(c["records"] for c in chains), "last_verification": verified}

    # -- keys ----------------------------------------------------------------------------
    def keys(self, caller: Caller) -> list[KeyRow]:
        """Every KEK version, what it wraps, and what a re-wrap still has to move off it."""
        from airflow_provider_mlsecrets.errors import KeyMissing
        from airflow_provider_mlsecrets.service.vault import KeyView

        with self._core.operation(caller, "insight.keys", Capability.AUDIT) as op:
            uses = dict(op.session.execute(
                select(SecretVersion.kek_id, func.count())
                .where(SecretVersion.wrapped_key.is_not(None))
                .group_by(SecretVersion.kek_id)).tuples().all())
            out = []
            for kek in op.session.scalars(select(Kek).order_by(Kek.version)):
                sensitive: bool | None = None
                extractable: bool | None = None
                try:
                    info = self._core.keys.describe(kek.label)
                    sensitive, extractable = info.sensitive, info.extractable
                except KeyMissing:
                    pass  # shown as unknown: the token no longer has it
                wraps = uses.get(kek.label, 0)
                out.append(KeyRow(key=KeyView(
                    label=kek.label, version=kek.version, state=kek.state,
                    created_at=format_ts(kek.created_at), versions_wrapped=wraps,
                    sensitive=sensitive, extractable=extractable), wraps=wraps,
                    pending_rewrap=wraps if kek.state == KeyState.RETIRED.value else 0))
            return out

    # -- charts --------------------------------------------------------------------------
    def activity(self, caller: Caller, *, since: datetime, bucket: str = "hour"
                 ) -> list[Bucket]:
        """Allowed and denied records per hour or day since ``since`` (every bucket, empty
        ones too; index-only counts over the window)."""
        if bucket not in BUCKETS:
            raise InvalidInput(f"bucket is one of {', '.join(BUCKETS)}")
        width, step = BUCKETS[bucket]
        now = utcnow()
        start = _floor(since.astimezone(timezone.utc), bucket)
        if start > now:
            raise InvalidInput("since is in the future")
        if (now - start) / step > MAX_BUCKETS:
            raise InvalidInput(f"more than {MAX_BUCKETS} buckets: choose a later since, or "
                               "bucket=day")
        with self._core.operation(caller, "insight.activity", Capability.AUDIT) as op:
            counts: dict[str, dict[str, int]] = {}
            for outcome in (Outcome.ALLOWED.value, Outcome.DENIED.value):
                key = func.substr(AuditRecord.ts, 1, width)
                for label, n in op.session.execute(
                        select(key, func.count()).where(
                            AuditRecord.outcome == outcome,
                            AuditRecord.ts >= format_ts(start)).group_by(key)).tuples():
                    counts.setdefault(label, {})[outcome] = int(n)
            out, moment = [], start
            while moment <= now:
                label = format_ts(moment)[:width]
                found = counts.get(label, {})
                out.append(Bucket(start=moment, allowed=found.get("allowed", 0),
                                  denied=found.get("denied", 0)))
                moment += step
            op.reason += f"; {len(out)} {bucket}s since {format_ts(start)}"
            return out

    def reach_graph(self, caller: Caller, *, since: datetime, limit: int = 2000
                    ) -> list[tuple[str, str, int]]:
        """Which DAG reached which secret since ``since``: ``(dag_id, path, allowed
        records)``, the busiest ``limit`` pairs first."""
        if not 1 <= limit <= 10_000:
            raise InvalidInput("limit must be from 1 to 10000")
        with self._core.operation(caller, "insight.reach", Capability.AUDIT) as op:
            n = func.count()
            rows = op.session.execute(
                select(dag_expr, AuditRecord.path, n).where(
                    dag_expr.is_not(None), AuditRecord.ts >= format_ts(since),
                    AuditRecord.outcome == Outcome.ALLOWED.value, AuditRecord.path != "")
                .group_by(dag_expr, AuditRecord.path)
                .order_by(n.desc(), dag_expr, AuditRecord.path)
                .limit(limit)).tuples().all()
            op.reason += f"; {len(rows)} pairs since {format_ts(since)}"
            return [(str(dag), str(path), int(count)) for dag, path, count in rows]

    def age_against_policy(self, caller: Caller) -> list[tuple[str, float, float | None]]:
        """Each live secret's current value's age in days, beside its rotation interval in
        days (``None``: no policy; a cron schedule counts as the gap between its next two
        runs)."""
        now = utcnow()
        with self._core.operation(caller, "insight.age", Capability.AUDIT) as op:
            rows = op.session.execute(
                select(Secret.path, Secret.rotation, SecretVersion.created_at)
                .join(SecretVersion, and_(SecretVersion.secret_id == Secret.id,
                                          SecretVersion.version == Secret.current_version))
                .where(Secret.deleted_at.is_(None)).order_by(Secret.path)).tuples().all()
            op.reason += f"; {len(rows)} secrets"
            return [(path, _days(now - created), _interval_days(rotation))
                    for path, rotation, created in rows]

    # -- access reviews (review/service.py) ------------------------------------------------
    def review(self, caller: Caller, *, window: str = "90d") -> MadeReview:
        """Make an access review of the last ``window``, signed and recorded."""
        from airflow_provider_mlsecrets.review import service

        return service.make(self, self._core, caller, window)

    def verify_review(self, caller: Caller, content: bytes) -> ReviewCheck:
        """Prove a review file unaltered and this vault's, or raise ``IntegrityError``."""
        from airflow_provider_mlsecrets.review import service

        return service.verify(self._core, caller, content)

    def note_revocations(self, caller: Caller, review_id: str, revoked: list[str],
                         skipped: list[str]) -> None:
        """Record what ``revoke --from-review`` did, as ``review.revoke``."""
        from airflow_provider_mlsecrets.review import service

        service.note_revocations(self._core, caller, review_id, revoked, skipped)

    def secret_rows(self, op: Op, ids: Sequence[int], states: dict[int, str],
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


