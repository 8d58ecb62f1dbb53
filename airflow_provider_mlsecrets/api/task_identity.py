"""Which task a request to the Airflow Execution API speaks for, and how a refusal there is
answered. Loaded only in the Airflow API server (the plugin's middleware).

Airflow's ``JWTBearer`` validates the task's token and leaves it in the ASGI scope as
``scope["ti_token"]``; :class:`TaskIdentityMiddleware` publishes that scope to this thread
so the secrets backend can read the validated token instead of checking the JWT again. A
valid signature is not enough to speak for a DAG: the token must name the task instance's
*current* try (Airflow gives every try a new id) and that try must be running. A token of a
finished task, of an earlier try, or of a workload (not yet started) is refused.

A refusal inside an Execution API request is :class:`ExecutionAPIDenied`: both the
secrets-backend refusal Airflow's lookup loops re-raise (so no lower backend answers) and a
FastAPI ``HTTPException``, so the Execution API answers it as an HTTP 403 with a JSON body
(no traceback, no 500). The Task SDK retries only 5xx answers; on a 403 the task fails at
once with "Access denied", and the vault sees exactly one attempt.
"""

from __future__ import annotations

import contextvars
from collections.abc import MutableMapping
from typing import Any

from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
from fastapi import HTTPException

from airflow_provider_mlsecrets.api.hardening import Receive, Scope, Send
from airflow_provider_mlsecrets.errors import AccessDenied

SCOPE_ENTRY = "ti_token"  # airflow.api_fastapi.execution_api.security._REQUEST_SCOPE_TOKEN_KEY
RUNNING = "running"
# the ASGI scope of the Execution API request this thread serves; None outside one
_SCOPE: contextvars.ContextVar[MutableMapping[str, Any] | None] = contextvars.ContextVar(
    "mlsecrets_execution_scope", default=None)


class TaskRefused(AccessDenied):
    """The request's task token may not speak for its DAG (not verified, not the current
    try, not running). ``claimed`` is what the token says, for the audit record only."""

    def __init__(self, reason: str, claimed: dict[str, Any] | None = None) -> None:
        super().__init__(f"access denied: {reason}")
        self.reason = reason
        self.claimed = claimed or {}


class ExecutionAPIDenied(AirflowSecretsBackendAccessDenied, HTTPException):
    """A final refusal of a task's lookup: HTTP ``status_code`` (403, or 404 for a missing
    ``mlsecrets:`` key) with ``{"reason": ..., "message": ...}`` as its JSON detail."""

    def __init__(self, message: str, *, status_code: int = 403,
                 reason: str = "access_denied") -> None:
        HTTPException.__init__(self, status_code=status_code,
                               detail={"reason": reason, "message": message})
        self.args = (message,)

    def __str__(self) -> str:
        return str(self.args[0])


class TaskIdentityMiddleware:
    """Remember, for the duration of each Execution API request, its ASGI scope, where
    Airflow's own validation leaves the task's token. A request whose token does not
    validate never gets that far; one that does is still refused below unless its task
    instance is the current, running try."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reset = None
        # any path with an /execution/ segment (behind a base_url prefix too): marking a
        # request that is not one only makes its lookups fail closed
        if scope["type"] == "http" and "/execution/" in scope.get("path", ""):
            scope.pop(SCOPE_ENTRY, None)  # only Airflow's validation below may put one there
            reset = _SCOPE.set(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            if reset is not None:
                _SCOPE.reset(reset)


def in_execution_request() -> bool:
    """Whether this thread serves a task's request through the Execution API."""
    return _SCOPE.get() is not None


def task_identity() -> dict[str, Any]:
    """The running task instance whose Execution API request this thread serves (dag_id,
    task_id, run_id, map_index, try_number, team). Raises :class:`TaskRefused` saying why
    not: the token did not verify or is not a task's, it belongs to no task instance, to
    an earlier try, or to a try that is not running (finished, queued, ...)."""
    scope = _SCOPE.get()
    token = scope.get(SCOPE_ENTRY) if scope is not None else None
    claims = getattr(token, "claims", None)
    if token is None or claims is None:
        raise TaskRefused("the task's Execution API token did not verify")
    kind = getattr(claims, "scope", None)
    if kind != "execution":
        raise TaskRefused(f"a {kind} token is not a running task's", {"ti_id": str(token.id)})
    from airflow.api_fastapi.execution_api.security import get_team_name_for_ti
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session
    from sqlalchemy import select

    fields = (TaskInstance.dag_id, TaskInstance.task_id, TaskInstance.run_id,
              TaskInstance.map_index, TaskInstance.try_number, TaskInstance.state)
    with create_session() as session:
        row = session.execute(select(*fields).where(TaskInstance.id == token.id)).one_or_none()
        if row is None:
            old = session.execute(select(
                TaskInstanceHistory.dag_id, TaskInstanceHistory.task_id,
                TaskInstanceHistory.run_id, TaskInstanceHistory.map_index,
                TaskInstanceHistory.try_number, TaskInstanceHistory.state).where(
                TaskInstanceHistory.task_instance_id == token.id)).first()
            if old is None:
                raise TaskRefused("the token names no task instance (unknown or forged)",
                                  {"ti_id": str(token.id)})
            raise TaskRefused(
                f"the token is for an earlier try (try {old.try_number}, {old.state}) of "
                f"{old.dag_id}.{old.task_id}, not the current one", _claimed(old, token.id))
        team = get_team_name_for_ti(token.id, session)
    if row.state != RUNNING:
        raise TaskRefused(f"the task instance is {row.state or 'not started'}, not running "
                          "(finished tasks and their callbacks cannot look up secrets)",
                          _claimed(row, token.id))
    return {**_claimed(row, token.id), "team": team}


def _claimed(row: Any, ti_id: Any) -> dict[str, Any]:
    return {"dag_id": row.dag_id, "task_id": row.task_id, "run_id": row.run_id,
            "map_index": row.map_index, "try_number": row.try_number, "ti_id": str(ti_id)}
