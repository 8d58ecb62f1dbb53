"""The ``/v1/insight`` routes the security console reads, and ``/v1/review``: thin, like the
other routes. Every answer is metadata (never a value, never a token hash), every call one
audited ``insight.*`` operation; query parameters are validated and bounded here, so
nothing unbounded reaches the database."""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from airflow_provider_mlsecrets.api.routes import MAX_NAME, Who, _Strict
from airflow_provider_mlsecrets.audit.record import Outcome
from airflow_provider_mlsecrets.durations import parse_moment
from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.plain import plain
from airflow_provider_mlsecrets.service import Vault
from airflow_provider_mlsecrets.service.audit import AuditFilter
from airflow_provider_mlsecrets.service.insight import MAX_EXPORT, MAX_LIMIT

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Moment = Annotated[str | None, Query(max_length=64, description="ISO 8601, or a duration "
                                                                "ago such as 7d")]
Seq = Annotated[int | None, Query(ge=1, le=2**31 - 1)]
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)


def moment(text: str | None, default: str | None = None) -> datetime | None:
    """A time from a query parameter; never before 1970, whose records sort as text."""
    text = text or default
    if text is None:
        return None
    try:
        found = parse_moment(text, future=False).astimezone(timezone.utc)
    except (OverflowError, TypeError, ValueError):
        raise InvalidInput(f"cannot read {text[:64]!r} as a time") from None
    return max(found, EARLIEST)


APPROVAL_FIELDS = ("id", "principal", "path", "state", "window_seconds", "requested_at",
                   "decided_by", "expires_at", "justification")
MEDIA = {"json": "application/json", "html": "text/html; charset=utf-8",
         "csv": "text/csv; charset=utf-8"}


class ReviewIn(_Strict):
    since: str = Field(default="90d", max_length=16, description="the window: 90d")
    format: str = Field(default="json", pattern="^(json|html|csv)$")


def build_insight_router(vault: Callable[[], Vault]) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["insight"])

    @router.get("/insight/me")
    def me(caller: Who) -> dict[str, Any]:
        """Who you are to the vault, and the console views you may open."""
        return plain(vault().insight.me(caller))  # type: ignore[no-any-return]

    @router.get("/insight/inventory")
    def inventory(caller: Who, search: Annotated[str, Query(max_length=MAX_NAME)] = "",
                  team: Annotated[str | None, Query(max_length=64)] = None,
                  state: Annotated[str | None, Query(max_length=16)] = None,
                  offset: Offset = 0, limit: Limit = 50,
                  sort: Annotated[str, Query(max_length=8)] = "path",
                  deleted: bool = False) -> dict[str, Any]:
        """The secrets the caller may list, with owner, version, age, rotation and team."""
        return plain(vault().insight.inventory(  # type: ignore[no-any-return]
            caller, search=search, team=team, state=state, offset=offset, limit=limit,
            sort=sort, deleted=deleted))

    @router.get("/insight/secrets/{path:path}")
    def secret(path: str, caller: Who,
               recent: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50) -> dict[str, Any]:
        """One secret: versions, who can reach it, who did, rotation history."""
        return plain(vault().insight.secret(caller, path, recent=recent))  # type: ignore[no-any-return]

    @router.get("/insight/principals")
    def principals(caller: Who, since: Moment = None) -> builtins.list[dict[str, Any]]:
        """Every principal with its grants, unused grants and last use."""
        return plain(vault().insight.principals(  # type: ignore[no-any-return]
            caller, since=moment(since)))

    @router.get("/insight/principals/{name}")
    def principal(name: str, caller: Who, since: Moment = None,
                  reach_limit: Annotated[int, Query(ge=0, le=100_000)] = 1000
                  ) -> dict[str, Any]:
        """One principal: each grant's last use and uses, and what it reaches."""
        if len(name) > MAX_NAME:
            raise InvalidInput("a principal name is at most 256 characters")
        return plain(vault().insight.principal(  # type: ignore[no-any-return]
            caller, name, since=moment(since), reach_limit=reach_limit))

    @router.get("/insight/rotation")
    def rotation(caller: Who) -> builtins.list[dict[str, Any]]:
        """Rotations, most urgent first: failed, overdue, half done, due, in grace, ok."""
        return plain(vault().insight.rotation(caller))  # type: ignore[no-any-return]

    def filters(principal: str | None, path_prefix: str | None, action: str | None,
                outcome: Outcome | None, since: str | None, until: str | None) -> AuditFilter:
        return AuditFilter(principal=principal, path_prefix=path_prefix, action=action,
                           outcome=outcome.value if outcome else None, since=moment(since),
                           until=moment(until))

    @router.get("/insight/audit")
    def audit(caller: Who, principal: Annotated[str | None, Query(max_length=MAX_NAME)] = None,
              path_prefix: Annotated[str | None, Query(max_length=MAX_NAME)] = None,
              dag_id: Annotated[str | None, Query(max_length=MAX_NAME)] = None,
              outcome: Outcome | None = None,
              action: Annotated[str | None, Query(max_length=64)] = None,
              since: Moment = None, until: Moment = None, before_chain: Seq = None,
              before_seq: Seq = None, limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100
              ) -> dict[str, Any]:
        """The trail, newest first; the next page is ``before_chain``/``before_seq`` =
        the answer's ``next_before``."""
        if (before_chain is None) != (before_seq is None):
            raise InvalidInput("give before_chain and before_seq together")
        before = (before_chain, before_seq) if before_chain and before_seq else None
        return plain(vault().insight.audit(  # type: ignore[no-any-return]
            caller, filters(principal, path_prefix, action, outcome, since, until),
            dag_id=dag_id, before=before, limit=limit))

    @router.get("/insight/audit/health")
    def audit_health(caller: Who) -> dict[str, Any]:
        """Chains, their heads and HSM high-water marks, and the last verification."""
        return plain(vault().insight.audit_health(caller))  # type: ignore[no-any-return]

    @router.get("/insight/audit/export")
    def audit_export(caller: Who,
                     principal: Annotated[str | None, Query(max_length=MAX_NAME)] = None,
                     path_prefix: Annotated[str | None, Query(max_length=MAX_NAME)] = None,
                     dag_id: Annotated[str | None, Query(max_length=MAX_NAME)] = None,
                     outcome: Outcome | None = None,
                     action: Annotated[str | None, Query(max_length=64)] = None,
                     since: Moment = None, until: Moment = None,
                     limit: Annotated[int, Query(ge=1, le=MAX_EXPORT)] = MAX_EXPORT
                     ) -> StreamingResponse:
        """Matching records, oldest first, as JSON lines (at most 100,000)."""
        rows = vault().insight.audit_export(
            caller, filters(principal, path_prefix, action, outcome, since, until),
            dag_id=dag_id, limit=limit)

        def lines() -> Iterator[str]:
            for row in rows:
                yield json.dumps(plain(row), sort_keys=True) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers={
            "content-disposition": 'attachment; filename="mlsecrets-audit.jsonl"'})

    @router.get("/insight/keys")
    def keys(caller: Who) -> builtins.list[dict[str, Any]]:
        """KEK versions, what each wraps, and the re-wrap still to do."""
        return plain(vault().insight.keys(caller))  # type: ignore[no-any-return]

    @router.get("/insight/activity")
    def activity(caller: Who, since: Moment = None,
                 bucket: Annotated[str, Query(max_length=8)] = "hour"
                 ) -> builtins.list[dict[str, Any]]:
        """Allowed and denied records per hour or day (default: the last 24 hours)."""
        start = moment(since, "24h") or datetime.now(timezone.utc)
        return plain(vault().insight.activity(  # type: ignore[no-any-return]
            caller, since=start, bucket=bucket))

    @router.get("/insight/reach")
    def reach(caller: Who, since: Moment = None) -> builtins.list[dict[str, Any]]:
        """Which DAG reached which secret (default: the last 7 days)."""
        start = moment(since, "7d") or datetime.now(timezone.utc)
        return [{"dag_id": dag, "path": path, "allowed": n}
                for dag, path, n in vault().insight.reach_graph(caller, since=start)]

    @router.get("/insight/approvals")
    def approvals(caller: Who) -> builtins.list[dict[str, Any]]:
        """Break-glass requests waiting for a second engineer, and the windows open now
        (``access.list``, as ``mlsecrets access list --open``): the console shows them and
        approves nothing."""
        return [plain({name: getattr(r, name) for name in APPROVAL_FIELDS})
                for r in vault().break_glass.requests(caller, open_only=True)]

    @router.get("/insight/age")
    def age(caller: Who) -> builtins.list[dict[str, Any]]:
        """Each secret's age beside its rotation interval, in days."""
        return [{"path": path, "age_days": days, "interval_days": interval}
                for path, days, interval in vault().insight.age_against_policy(caller)]

    @router.post("/review")
    def review(caller: Who, body: ReviewIn | None = None) -> Response:
        """An access review of the last ``since``, signed by the HSM and recorded (as
        ``mlsecrets review`` makes it), as a file to keep: JSON, HTML or CSV."""
        body = body or ReviewIn()
        made = vault().insight.review(caller, window=body.since)
        name = f"mlsecrets-review-{made.signature.review_id}.{body.format}"
        return Response(made.files[body.format], media_type=MEDIA[body.format], headers={
            "content-disposition": f'attachment; filename="{name}"'})

    return router

