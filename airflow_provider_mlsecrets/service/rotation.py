"""Secret rotation: four persisted, idempotent steps, then invalidation after a grace period.

::

    begin     take the secret's lease (check-and-set on its rotation row), load the values
    create    the rotator makes the next value; stored at once as version n+1, ``pending``
    set       the rotator makes the service accept it
    test      the rotator proves it works
    finish    pending -> current, current -> previous (until the grace period ends)
    ...
    invalidate  after the grace period the rotator makes the previous value stop working at
                its service; the version is then ``retired``, and destroyed after retention

Each step ends with a transaction that records it (with its audit record) and renews the
lease; rotator calls run between transactions, so no database lock is held while a service
is contacted. A failure records why and releases the lease; ``current`` is untouched and the
next run resumes at the step that failed, with the same pending value. A process that dies
leaves its lease to run out (``MLSECRETS_ROTATION_LEASE``); the next run then resumes. Two
runs never interleave: the lease is taken by check-and-set under the secret's row lock, and
every step checks that its run still holds it.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets.audit.record import Outcome, format_ts
from airflow_provider_mlsecrets.errors import (
    AccessDenied,
    IntegrityError,
    InvalidInput,
    MLSecretsError,
    NotFound,
    RotationBusy,
    RotationFailed,
)
from airflow_provider_mlsecrets.injection.redact import Redactor
from airflow_provider_mlsecrets.paths import parse_path
from airflow_provider_mlsecrets.policy.roles import Capability
from airflow_provider_mlsecrets.rotation.interface import RotationContext, Rotator
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service._core import Caller, Core, Op, utcnow
from airflow_provider_mlsecrets.service.secrets import (
    SecretsService,
    awaiting_invalidation,
    erase,
    retire,
    rotation_busy,
    rotation_versions,
    start_grace,
)
from airflow_provider_mlsecrets.store.models import (
    Rotation,
    RotationStep,
    Secret,
    VersionState,
)

StepHook = Callable[[str], None]


@dataclass(frozen=True)
class RotationResult:
    path: str
    result: str  # "rotated", "invalidated", "not due"
    version: int | None  # the current version afterwards
    previous: int | None
    steps: tuple[str, ...]


@dataclass(frozen=True)
class RotationStatus:
    path: str
    schedule: str
    rotator: str
    grace: str
    retention: str
    next_due_at: datetime
    step: str
    pending_version: int | None
    running: bool
    previous_version: int | None
    invalidate_after: datetime | None
    last_result: str | None
    last_finished_at: datetime | None
    last_error: str | None
    failures: int
    rotations: int
    current_version: int | None


@dataclass
class _Plan:
    """What a run knows after ``begin``: never persisted, values held only for the run."""

    policy: RotationPolicy
    rotator: Rotator
    step: RotationStep
    current: bytes | None = field(repr=False)
    pending: bytes | None = field(repr=False)
    current_version: int | None = None
    create: bool = False  # a new value is made in this run (not only an invalidation)
    set_at_service: bool = False  # a cancel must give the service the current value back


class RotationService:
    def __init__(self, core: Core, secrets: SecretsService) -> None:
        self._core = core
        self._secrets = secrets

    # -- policy ----------------------------------------------------------------------
    def set_policy(self, caller: Caller, path: str, policy: RotationPolicy, *,
                   next_due: datetime | None = None) -> RotationStatus:
        """Rotate ``path`` on ``policy`` from now on. A policy decides where the value (and
        any credential its rotator fetches) is sent, so it needs ``read`` and ``write`` on
        ``path`` and ``read`` on every vault path its configuration names: no one can route
        a value past a fence. The first rotation is due at ``next_due`` or one interval
        from now."""
        path = parse_path(path)
        rotator = policy.load_rotator()
        with self._core.operation(caller, "rotation.policy", Capability.READ, path) as op:
            for capability, target in [(Capability.WRITE, path),
                                       *((Capability.READ, p) for p in rotator.secret_paths())]:
                decision = op.actor.may(capability, target)
                if not decision.allowed:
                    raise AccessDenied(f"a rotation policy for {path} needs "
                                       f"{capability.value} on {target}: {decision.reason}")
            secret = self._secrets.existing(op.session, path, lock=True)
            busy = rotation_busy(op.session, secret)
            if busy is not None:
                raise InvalidInput(f"{busy}; finish or cancel it before changing its policy")
            secret.rotation = policy.to_json()
            self._secrets.seal_row(op.session, secret)
            now = utcnow()
            state = op.session.get(Rotation, secret.id)
            due = (next_due or policy.next_due(now)).astimezone(timezone.utc)
            if state is None:
                state = Rotation(secret_id=secret.id, next_due_at=due,
                                 step=RotationStep.IDLE.value, failures=0, rotations=0)
                op.session.add(state)
            else:
                state.next_due_at = due
            op.reason += f"; {policy.rotator} every {policy.schedule}, due {format_ts(due)}"
            op.session.flush()
            return _status(secret, state)

    def clear_policy(self, caller: Caller, path: str) -> None:
        """Stop rotating ``path`` (refused while a rotation of it is half done)."""
        path = parse_path(path)
        with self._core.operation(caller, "rotation.policy", Capability.WRITE, path) as op:
            secret = self._secrets.existing(op.session, path, lock=True)
            state = op.session.get(Rotation, secret.id)
            if secret.rotation is None:
                raise InvalidInput(f"{path} has no rotation policy")
            busy = rotation_busy(op.session, secret)
            if busy is not None:
                raise InvalidInput(f"{busy}; finish it ('mlsecrets rotate {path}') or cancel "
                                   "it first")
            waiting = awaiting_invalidation(op.session, secret)
            if waiting and state is not None and state.invalidate_after is not None:
                raise InvalidInput(
                    f"version(s) {', '.join(str(v.version) for v in waiting)} of {path} still "
                    "work at the service until the rotation invalidates them; run "
                    f"'mlsecrets rotate --due' after {format_ts(state.invalidate_after)}, "
                    "then clear the policy")
            secret.rotation = None
            self._secrets.seal_row(op.session, secret)
            if state is not None:
                op.session.delete(state)
            op.reason += "; rotation policy removed"

    def show(self, caller: Caller, path: str) -> RotationStatus:
        path = parse_path(path)
        with self._core.operation(caller, "rotation.show", Capability.LIST, path) as op:
            secret = self._secrets.existing(op.session, path, include_deleted=True)
            state = op.session.get(Rotation, secret.id)
            if secret.rotation is None or state is None:
                raise NotFound(f"{path} has no rotation policy ('mlsecrets rotation set')")
            return _status(secret, state)

    def status(self, caller: Caller) -> builtins.list[RotationStatus]:
        """Every rotation the caller may list, soonest due first."""
        with self._core.operation(caller, "rotation.status", None) as op:
            out = [_status(s, r) for s, r in self._policies(op, Capability.LIST)]
            op.reason += f"; {len(out)} shown"
            return sorted(out, key=lambda s: (s.next_due_at, s.path))

    def due(self, caller: Caller, now: datetime | None = None) -> builtins.list[str]:
        """Paths whose rotation is due, half done, or whose previous value awaits
        invalidation, among those the caller may rotate."""
        now = now or utcnow()
        with self._core.operation(caller, "rotation.due", None) as op:
            altered: set[str] = set()
            out = [s.path for s, r in self._policies(op, Capability.ROTATE, altered=altered)
                   if s.deleted_at is None and (s.path in altered or _needs_work(r, now))]
            op.reason += f"; {len(out)} due"
            return out

    # -- running ---------------------------------------------------------------------
    def rotate(self, caller: Caller, path: str, *, only_if_due: bool = False,
               after_step: StepHook | None = None) -> RotationResult:
        """Run (or resume) the rotation of ``path`` now; with ``only_if_due``, do only what
        is due (a rotation, a resumption or an invalidation). A cancel that was interrupted
        is finished instead."""
        path = parse_path(path)
        run = str(uuid.uuid4())
        hook = after_step or (lambda step: None)
        plan, expired = self._begin(caller, path, run, only_if_due)
        if plan is None:
            return RotationResult(path, "not due", None, None, ())
        if plan.step is RotationStep.CANCELLING:
            self._undo(caller, path, run, plan)
            return RotationResult(path, "cancelled", plan.current_version, None, ("cancel",))
        if plan.step is RotationStep.TESTED:
            # a resumed run tests again before it promotes: cheap, and it never trusts a
            # "tested" it did not see (the state row is not under a MAC)
            plan.step = RotationStep.SET
        ctx, known = self._context(caller, path, plan)
        steps: builtins.list[str] = []
        stage = "invalidate"
        try:
            if expired:  # invalidate what the grace period let live
                known += [value for _, value in expired]
                for _, value in expired:
                    plan.rotator.invalidate(ctx, value)
                self._invalidated(caller, path, run, [version for version, _ in expired])
                steps.append("invalidate")
                hook("invalidate")
            stage = "create"
            if plan.create:
                plan.pending = plan.rotator.create(ctx)
                known.append(plan.pending)
                self._advance(caller, path, run, RotationStep.CREATED, plan.pending)
                plan.step = RotationStep.CREATED
                steps.append("create")
                hook("create")
            if plan.step is RotationStep.IDLE:  # only an invalidation was due
                self._release(caller, path, run)
                return RotationResult(path, "invalidated", plan.current_version, None,
                                      tuple(steps))
            pending = plan.pending
            if pending is None:
                raise IntegrityError(f"the pending version of {path} is missing")
            for before, call, after in ((RotationStep.CREATED, plan.rotator.set, RotationStep.SET),
                                        (RotationStep.SET, plan.rotator.test,
                                         RotationStep.TESTED)):
                if plan.step is before:
                    stage = _VERB[after]
                    call(ctx, pending)
                    self._advance(caller, path, run, after)
                    plan.step = after
                    steps.append(_VERB[after])
                    hook(_VERB[after])
            stage = "finish"
            version, previous = self._finish(caller, path, run, plan.policy)
            steps.append("finish")
            hook("finish")
            return RotationResult(path, "rotated", version, previous, tuple(steps))
        except RotationBusy:
            raise
        except Exception as exc:
            reason = _redacted_reason(exc, known)
            self._fail(caller, path, run, reason)
            raise RotationFailed(f"rotation of {path} failed at {stage}: "
                                 f"{reason}; the current version is unchanged and the next run "
                                 "resumes") from None

    def cancel(self, caller: Caller, path: str) -> None:
        """Abandon a half-done rotation: the service is given the current value back (if the
        new one was already set there), the pending value is invalidated at the service and
        its version destroyed. The cancel is recorded before the service is touched, so an
        interrupted cancel is finished by the next run, never promoted."""
        path = parse_path(path)
        run = str(uuid.uuid4())
        plan, _ = self._begin(caller, path, run, False, action="rotation.cancel")
        if plan is None:  # only a run asked to go only if due returns none
            raise RotationFailed(f"no rotation of {path} to cancel")
        if plan.step is RotationStep.IDLE:
            self._release(caller, path, run)
            raise InvalidInput(f"no rotation of {path} is in progress")
        if plan.step is not RotationStep.CANCELLING:
            with self._step(caller, "rotation.cancel", path, run) as (op, _secret, state):
                op.reason += f"; undoing a rotation stopped after {state.step}"
                plan.set_at_service = state.step in (RotationStep.SET.value,
                                                     RotationStep.TESTED.value)
                state.step = RotationStep.CANCELLING.value
        self._undo(caller, path, run, plan)

    def _undo(self, caller: Caller, path: str, run: str, plan: _Plan) -> None:
        """The service side of a cancel, then the pending version destroyed. Both rotator
        calls are idempotent, so a resumed cancel simply makes them again."""
        ctx, known = self._context(caller, path, plan)
        try:
            if plan.set_at_service and plan.current:
                plan.rotator.set(ctx, plan.current)
            if plan.pending:  # a value the service issued in create must not stay valid
                plan.rotator.invalidate(ctx, plan.pending)
        except Exception as exc:
            reason = _redacted_reason(exc, known)
            self._fail(caller, path, run, reason)
            raise RotationFailed(f"cancelling the rotation of {path} failed: {reason}; the "
                                 "current version is served, and 'mlsecrets rotation cancel' "
                                 "or the next run finishes the cancel") from None
        with self._step(caller, "rotation.cancel", path, run) as (op, secret, state):
            if state.pending_version is not None:
                erase(self._secrets.version_row(op.session, secret, state.pending_version))
                op.reason += f"; pending version {state.pending_version} destroyed"
            state.step = RotationStep.IDLE.value
            state.pending_version = None
            state.last_result = "cancelled"
            state.last_finished_at = utcnow()
            _release_state(state)

    def _context(self, caller: Caller, path: str,
                 plan: _Plan) -> tuple[RotationContext, builtins.list[bytes]]:
        """The rotator's context and every value this run knows (to redact from errors),
        including the credentials the rotator fetches."""
        known: builtins.list[bytes] = [v for v in (plan.current, plan.pending) if v]

        def fetch(other: str) -> bytes:
            value = self._secrets.inject(caller, other)
            known.append(value)
            return value

        return RotationContext(path=path, current=plan.current, secret=fetch), known

    def retain(self, caller: Caller, now: datetime | None = None) -> builtins.list[str]:
        """Destroy retired versions older than their policy's retention ("path vN" each),
        counted from the moment each was retired."""
        now = now or utcnow()
        with self._core.operation(caller, "rotation.retain", None) as op:
            destroyed = []
            for secret, _ in self._policies(op, Capability.ROTATE):
                keep = RotationPolicy.from_json(secret.rotation or "").retention_period
                needed = rotation_versions(op.session, secret)
                for row in secret.versions:
                    if (row.state == VersionState.RETIRED.value and row.version not in needed
                            and row.invalidated_at is not None
                            and row.retired_at is not None and row.retired_at + keep <= now):
                        erase(row)
                        destroyed.append(f"{secret.path} v{row.version}")
            op.reason += "; destroyed " + (", ".join(destroyed) or "nothing")
            return destroyed

    # -- the steps, one transaction each ------------------------------------------------
    def _begin(self, caller: Caller, path: str, run: str, only_if_due: bool,
               action: str = "rotation.begin"
               ) -> tuple[_Plan | None, builtins.list[tuple[int, bytes]]]:
        with self._core.operation(caller, action, Capability.ROTATE, path) as op:
            secret = self._secrets.existing(op.session, path, lock=True)
            state = _locked_state(op.session, secret)
            if secret.rotation is None or state is None:
                raise InvalidInput(f"{path} has no rotation policy; set one with "
                                   f"'mlsecrets rotation set {path} --every 30d --rotator NAME'")
            now = utcnow()
            if only_if_due and not _needs_work(state, now):
                op.reason += "; not due"
                return None, []
            if state.owner is not None and state.lease_until is not None \
                    and state.lease_until > now:
                raise RotationBusy(
                    f"another run is rotating {path} (its lease runs until "
                    f"{format_ts(state.lease_until)}); try again after that")
            resumed = state.owner is not None
            state.owner = run
            state.lease_until = now + timedelta(seconds=self._core.settings.rotation_lease)
            state.last_started_at = now
            policy = RotationPolicy.from_json(secret.rotation)
            plan = _Plan(policy=policy, rotator=policy.load_rotator(),
                         step=RotationStep(state.step), current=None, pending=None,
                         current_version=secret.current_version)
            if secret.current_version is not None:
                plan.current = self._decrypt(op.session, secret, secret.current_version)
            if plan.step is not RotationStep.IDLE:
                plan.pending = self._decrypt(op.session, secret,
                                             self._pending_version(secret, state))
                plan.set_at_service = plan.step is RotationStep.CANCELLING  # it may have been
            plan.create = plan.step is RotationStep.IDLE and (
                not only_if_due or state.next_due_at <= now)
            # older values are invalidated once the grace period is over, or before a new
            # value replaces the current one (a rotation sooner than the grace period cuts
            # it short)
            expired: builtins.list[tuple[int, bytes]] = []
            if state.invalidate_after is not None and (plan.create
                                                       or state.invalidate_after <= now):
                expired = [(row.version, self._secrets.decrypt(op.session, path, row))
                           for row in awaiting_invalidation(op.session, secret)]
                if not expired:  # nothing left to invalidate (destroyed meanwhile, say)
                    state.previous_version = state.invalidate_after = None
            op.version = secret.current_version
            op.reason += (f"; resuming after {state.step}" if plan.step is not RotationStep.IDLE
                          else "; starting") + (" (a dead run's lease had run out)"
                                                if resumed else "")
            return plan, expired

    def _pending_version(self, secret: Secret, state: Rotation) -> int:
        """The pending version of a half-done rotation, checked against what the secret's
        MAC covers: only the newest version, above the current one, still ``pending``."""
        pending = state.pending_version
        rows = {v.version: v for v in secret.versions}
        if (pending is None or pending != secret.latest_version
                or pending <= (secret.current_version or 0) or pending not in rows
                or rows[pending].state != VersionState.PENDING.value):
            raise IntegrityError(f"the rotation state of {secret.path} does not match its "
                                 "versions: altered outside the vault")
        return pending

    def _advance(self, caller: Caller, path: str, run: str, step: RotationStep,
                 pending: bytes | None = None) -> None:
        with self._step(caller, f"rotation.{_VERB[step]}", path, run) as (op, secret, state):
            if pending is not None:
                row = self._secrets.add_version(op.session, secret, pending,
                                                created_by=op.actor.name)
                self._secrets.seal_row(op.session, secret)
                state.pending_version = row.version
                op.version = row.version
                op.reason += f"; version {row.version} pending"
            else:
                op.version = state.pending_version
            state.step = step.value

    def _finish(self, caller: Caller, path: str, run: str,
                policy: RotationPolicy) -> tuple[int, int | None]:
        with self._step(caller, "rotation.finish", path, run) as (op, secret, state):
            pending = state.pending_version
            if pending is None or pending != secret.latest_version or (
                    secret.current_version or 0) >= pending:
                raise IntegrityError(f"the rotation state of {path} does not match its "
                                     "versions: altered outside the vault")
            row = self._secrets.version_row(op.session, secret, pending)
            if row.state != VersionState.PENDING.value:
                raise IntegrityError(f"version {pending} of {path} is not pending")
            previous = secret.current_version
            self._secrets.make_current(op.session, secret, row)
            start_grace(op.session, secret, previous)
            now = utcnow()
            state.step = RotationStep.IDLE.value
            state.pending_version = None
            state.last_result = "rotated"
            state.last_error = None
            state.last_finished_at = now
            state.failures = 0
            state.rotations += 1
            state.next_due_at = policy.next_due(now)
            _release_state(state)
            op.session.flush()
            self._secrets.prune(op.session, secret)
            op.version = pending
            op.reason += f"; version {pending} is current" + (
                "" if previous is None else
                f", version {previous} works until {format_ts(state.invalidate_after or now)}")
            return pending, previous

    def _invalidated(self, caller: Caller, path: str, run: str,
                     versions: builtins.list[int]) -> None:
        with self._step(caller, "rotation.invalidate", path, run) as (op, secret, state):
            now = utcnow()
            for row in secret.versions:
                if row.version in versions:
                    row.invalidated_at = now
                    if row.state == VersionState.PREVIOUS.value:
                        retire(row)
            op.version = max(versions)
            op.reason += (f"; version(s) {', '.join(map(str, sorted(versions)))} invalidated "
                          "at the service, retired")
            state.previous_version = None
            state.invalidate_after = None

    def _release(self, caller: Caller, path: str, run: str) -> None:
        with self._step(caller, "rotation.end", path, run) as (_, _secret, state):
            state.last_finished_at = utcnow()
            _release_state(state)

    def _fail(self, caller: Caller, path: str, run: str, reason: str) -> None:
        with self._core.operation(caller, "rotation.fail", Capability.ROTATE, path) as op:
            op.outcome = Outcome.ERROR
            op.reason = reason
            secret = self._secrets.existing(op.session, path, lock=True, include_deleted=True)
            state = _locked_state(op.session, secret)
            if state is not None and state.owner == run:
                state.failures += 1
                state.last_result = "failed"
                state.last_error = reason
                state.last_finished_at = utcnow()
                _release_state(state)

    # -- helpers ---------------------------------------------------------------------
    @contextmanager
    def _step(self, caller: Caller, action: str, path: str,
              run: str) -> Iterator[tuple[Op, Secret, Rotation]]:
        """One step's transaction: the locked secret and rotation rows, the check that this
        run still holds the lease, and the lease renewed."""
        with self._core.operation(caller, action, Capability.ROTATE, path) as op:
            secret = self._secrets.existing(op.session, path, lock=True)
            state = _locked_state(op.session, secret)
            if state is None or state.owner != run:
                raise RotationBusy(f"this run no longer holds the rotation of {path} (its "
                                   "lease ran out and another run took over)")
            state.lease_until = utcnow() + timedelta(seconds=self._core.settings.rotation_lease)
            yield op, secret, state

    def _decrypt(self, session: Session, secret: Secret, version: int) -> bytes:
        row = self._secrets.version_row(session, secret, version)
        return self._secrets.decrypt(session, secret.path, row)

    def _policies(self, op: Op, capability: Capability, *, altered: set[str] | None = None
                  ) -> builtins.list[tuple[Secret, Rotation]]:
        """The secrets under a policy that the caller may act on, checked against their MAC.
        Given ``altered``, a secret whose record fails the check is listed too and its path
        added there (so rotating it fails on its own), instead of being left out."""
        rows = op.session.execute(
            select(Secret, Rotation).join(Rotation, Rotation.secret_id == Secret.id)
            .where(Secret.rotation.is_not(None)).order_by(Secret.path)).tuples().all()
        out = []
        for secret, state in rows:
            if op.actor.may(capability, secret.path).allowed:
                try:
                    self._secrets.check(op.session, secret)
                except IntegrityError:  # its own rotation fails, loudly; the others go on
                    op.reason += f"; {secret.path} altered outside the vault"
                    if altered is not None:
                        altered.add(secret.path)
                        out.append((secret, state))
                    continue
                out.append((secret, state))
        return out


_VERB = {RotationStep.CREATED: "create", RotationStep.SET: "set", RotationStep.TESTED: "test"}


def _locked_state(session: Session, secret: Secret) -> Rotation | None:
    return session.execute(select(Rotation).where(Rotation.secret_id == secret.id)
                           .with_for_update()).scalar_one_or_none()


def _release_state(state: Rotation) -> None:
    state.owner = None
    state.lease_until = None


def _needs_work(state: Rotation, now: datetime) -> bool:
    return (state.next_due_at <= now or state.step != RotationStep.IDLE.value
            or (state.invalidate_after is not None and state.invalidate_after <= now))


def _status(secret: Secret, state: Rotation) -> RotationStatus:
    policy = RotationPolicy.from_json(secret.rotation or "")
    now = utcnow()
    return RotationStatus(
        path=secret.path, schedule=policy.schedule, rotator=policy.rotator,
        grace=policy.grace, retention=policy.retention, next_due_at=state.next_due_at,
        step=state.step, pending_version=state.pending_version,
        running=state.owner is not None and state.lease_until is not None
        and state.lease_until > now,
        previous_version=state.previous_version, invalidate_after=state.invalidate_after,
        last_result=state.last_result, last_finished_at=state.last_finished_at,
        last_error=state.last_error, failures=state.failures, rotations=state.rotations,
        current_version=secret.current_version)


def _redacted_reason(exc: BaseException, values: builtins.list[bytes]) -> str:
    """What a failure record says: our own message (or the type of anything else), with every
    value this run knows replaced, in case a service echoed one."""
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, MLSecretsError) else (
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    redact = Redactor(v.decode("utf-8", "replace") for v in values)
    return redact(text)[:500]
