"""What an access review says, read in the one transaction of its ``review.create``
operation: every principal's effective access (the vault's own decision over every live
secret) and grants with their last use in the window; the grants unused for the window
(allow grants of active principals that existed for the whole window and decided nothing
in it: what ``revoke --from-review --unused`` revokes); principals with no allowed use in
the window; secrets whose rotation needs attention; every read of plaintext by a person;
the denials, grouped; and when the trail was last verified. Times are written as audit
records write them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets.audit.record import Outcome, format_ts
from airflow_provider_mlsecrets.policy.roles import Role
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.store.models import (
    AuditRecord,
    Rotation,
    Secret,
    decision_of,
)

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.service.insight import InsightService

ATTENTION = ("failed", "overdue", "half done", "due")  # rotation states a review lists
MAX_DENIAL_GROUPS = 10_000


def _ts(moment: datetime | None) -> str | None:
    return None if moment is None else format_ts(moment)


def collect(insight: InsightService, session: Session, *, review_id: str, vault_id: str,
            created_by: str, created_at: datetime, window: str, since: datetime
            ) -> dict[str, Any]:
    from airflow_provider_mlsecrets.service.insight import effective, rotation_state

    live = list(session.scalars(select(Secret.path).where(Secret.deleted_at.is_(None))
                                .order_by(Secret.path)))
    principals, unused, idle = [], [], []
    everyone = insight.principals_in(session)
    uses_of = [insight.grant_uses(session, who, since) for who in everyone]
    rows = insight.principal_rows(session, everyone, since, uses_of)
    for who, uses, row in zip(everyone, uses_of, rows, strict=True):
        active = who.status == "active"
        grants = []
        for grant, use in zip(who.grants, uses, strict=True):
            flagged = active and use.unused and grant.created_at <= since
            grants.append({"pattern": grant.pattern, "effect": grant.effect,
                           "capabilities": grant.capabilities,
                           "created_at": _ts(grant.created_at),
                           "last_used_at": _ts(use.last_used_at), "uses": use.uses,
                           "flagged": flagged})
            if flagged:
                unused.append({"principal": who.name, "role": who.role,
                               "pattern": grant.pattern, "capabilities": grant.capabilities,
                               "created_at": _ts(grant.created_at)})
        access: list[dict[str, Any]] = []
        if active:
            groups: dict[str, list[str]] = {}
            for path, (allowed, _denied, _via) in effective(Role(who.role), who.rules,
                                                            live).items():
                if allowed:
                    groups.setdefault(",".join(allowed), []).append(path)
            for caps, paths in sorted(groups.items()):
                every = len(paths) == len(live)
                access.append({"capabilities": caps, "count": len(paths), "every": every,
                               "paths": [] if every else paths})
        is_idle = active and row.last_used_at is None
        if is_idle:
            idle.append(who.name)
        principals.append({
            "name": who.name, "role": who.role, "kind": who.kind, "status": who.status,
            "created_at": _ts(who.created_at), "last_seen_at": _ts(row.last_seen_at),
            "last_used_at": _ts(row.last_used_at), "idle": is_idle, "grants": grants,
            "access": access})
    return {
        "format": "mlsecrets-review-v1", "review_id": review_id, "vault_id": vault_id,
        "created_by": created_by, "created_at": format_ts(created_at), "window": window,
        "since": format_ts(since), "until": format_ts(created_at),
        "secrets": len(live), "principals": principals, "unused_grants": unused,
        "idle_principals": idle,
        "rotations": _rotations(session, created_at, rotation_state),
        "plaintext_reads": _reads(session, since, created_at),
        "denials": _denials(session, since, created_at),
        "last_verification": _last_verification(session),
    }


def _last_verification(session: Session) -> dict[str, Any] | None:
    """The trail's last ``audit verify`` and its result: a review reads the trail as it
    is, so say when it was last proven intact."""
    record = session.scalars(select(AuditRecord).where(AuditRecord.action == "audit.verify")
                             .order_by(AuditRecord.ts.desc(), AuditRecord.chain.desc(),
                                       AuditRecord.seq.desc()).limit(1)).first()
    if record is None:
        return None
    return {"ts": record.ts, "principal": record.principal, "outcome": record.outcome,
            "ok": record.outcome == Outcome.ALLOWED.value and "; ok," in record.reason,
            "reason": record.reason}


def _rotations(session: Session, now: datetime, classify: Any) -> list[dict[str, Any]]:
    out = []
    for secret, state in session.execute(
            select(Secret, Rotation).join(Rotation, Rotation.secret_id == Secret.id)
            .where(Secret.rotation.is_not(None), Secret.deleted_at.is_(None))
            .order_by(Secret.path)).tuples():
        found = classify(True, state, now)
        if found not in ATTENTION:
            continue
        try:
            schedule = RotationPolicy.from_json(secret.rotation or "").schedule
        except (ValueError, KeyError, TypeError):
            schedule = "<unreadable>"
        out.append({"path": secret.path, "state": found, "schedule": schedule,
                    "next_due_at": _ts(state.next_due_at), "failures": state.failures,
                    "last_error": state.last_error})
    return out


def _reads(session: Session, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Every allowed ``secret.read``: plaintext back to a person (index: action, path, ts)."""
    out = []
    for r in session.scalars(select(AuditRecord).where(
            AuditRecord.action == "secret.read", AuditRecord.outcome == Outcome.ALLOWED.value,
            AuditRecord.ts >= format_ts(since), AuditRecord.ts <= format_ts(until))
            .order_by(AuditRecord.ts, AuditRecord.chain, AuditRecord.seq)):
        out.append({"ts": r.ts, "principal": r.principal, "path": r.path,
                    "version": r.version, "caller": _caller(r.context),
                    "chain": r.chain, "seq": r.seq})
    return out


def _caller(context: str) -> str:
    try:
        found = json.loads(context)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(found, dict):
        return ""
    return " ".join(f"{k}={found[k]}" for k in ("component", "client", "host", "pid")
                    if found.get(k) is not None)


def _denials(session: Session, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Denied records, grouped by who, what, where and why (index: outcome, ts)."""
    reason = decision_of(AuditRecord.reason)
    n = func.count()
    rows = session.execute(
        select(AuditRecord.principal, AuditRecord.action, AuditRecord.path, reason, n,
               func.min(AuditRecord.ts), func.max(AuditRecord.ts))
        .where(AuditRecord.outcome == Outcome.DENIED.value,
               AuditRecord.ts >= format_ts(since), AuditRecord.ts <= format_ts(until))
        .group_by(AuditRecord.principal, AuditRecord.action, AuditRecord.path, reason)
        .order_by(n.desc(), AuditRecord.principal, AuditRecord.action, AuditRecord.path,
                  reason).limit(MAX_DENIAL_GROUPS)).tuples().all()
    return [{"principal": p, "action": a, "path": path, "reason": why, "count": int(count),
             "first": first, "last": last} for p, a, path, why, count, first, last in rows]
