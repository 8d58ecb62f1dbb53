"""The vault service inside the Airflow API server, and the two identities only Airflow can
vouch for:

- **people**: an Airflow user's bearer token (from ``POST /auth/token`` or the UI) is verified
  by Airflow's auth manager; the user acts as principal ``airflow-user:NAME`` if a security
  engineer created one, else as ``airflow-role:ROLE`` for one of the user's Airflow roles;
- **tasks**: a task's Connection or Variable lookup that falls through the Execution API to
  this server carries the task instance's signed token; :class:`TaskIdentityMiddleware`
  verifies it, and the secrets backend here then acts as principal ``dag:DAG_ID``, so one
  DAG cannot obtain another DAG's secrets. (Task code itself never sees that token, so a
  task cannot present it to ``/mlsecrets/v1`` directly; see docs/service.md.)
"""

from __future__ import annotations

import contextvars
import functools
import logging
from typing import Any
from uuid import UUID

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_mlsecrets.api.app import create_app
from airflow_provider_mlsecrets.api.hardening import Receive, Scope, Send, bearer_credential
from airflow_provider_mlsecrets.errors import AccessDenied

log = logging.getLogger(__name__)
URL_PREFIX = "/mlsecrets"
UNVERIFIED = "unverified"  # an Execution API request whose task token did not verify
# set for the duration of each Execution API request: the task instance it verified, or
# UNVERIFIED; None outside such requests
_TASK_INSTANCE: contextvars.ContextVar[UUID | str | None] = contextvars.ContextVar(
    "mlsecrets_task_instance", default=None)


async def airflow_user(credential: str) -> tuple[str, ...] | None:
    """The principal names of the Airflow user this token belongs to (``None`` if it is not
    a valid Airflow user token)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.configuration import conf

    if conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False):
        return None  # every anonymous request carries an admin token then: trust none
    try:
        user = await get_auth_manager().get_user_from_token(credential)
    except Exception:  # expired, revoked, forged or not a user token: not verified
        return None
    roles = [getattr(user, "role", None), *(getattr(r, "name", r)
                                            for r in getattr(user, "roles", None) or [])]
    return (f"airflow-user:{user.get_name()}",
            *(f"airflow-role:{str(r).lower()}" for r in roles if r))


@functools.cache
def _task_token_validator() -> Any:
    from airflow.api_fastapi.auth.tokens import JWTValidator, get_sig_validation_args
    from airflow.configuration import conf

    required = {"aud", "exp", "iat"}
    issuer = conf.get("api_auth", "jwt_issuer", fallback=None)
    if issuer:
        required.add("iss")
    return JWTValidator(required_claims=frozenset(required), issuer=issuer,
                        audience=conf.get_mandatory_list_value("execution_api", "jwt_audience"),
                        **get_sig_validation_args(make_secret_key_if_needed=False))


class TaskIdentityMiddleware:
    """On Execution API requests, verify the task's token the way the Execution API does and
    remember which task instance is asking, for the secrets backend in this process. An
    invalid token sets nothing (the Execution API refuses the request anyway)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reset = None
        # any path with an /execution/ segment (behind a base_url prefix too): marking a
        # request that is not one only makes its lookups fail closed
        if scope["type"] == "http" and "/execution/" in scope.get("path", ""):
            identity: UUID | str = UNVERIFIED
            credential = bearer_credential(scope)
            if credential:
                try:
                    claims = await _task_token_validator().avalidated_claims(credential)
                    identity = UUID(str(claims["sub"]))
                except Exception as exc:  # not a valid task token: no identity
                    log.debug("mlsecrets: no task identity (%s)", type(exc).__name__)
            reset = _TASK_INSTANCE.set(identity)
        try:
            await self.app(scope, receive, send)
        finally:
            if reset is not None:
                _TASK_INSTANCE.reset(reset)


def in_execution_request() -> bool:
    """Whether this thread serves a task's request through the Execution API."""
    return _TASK_INSTANCE.get() is not None


def task_identity() -> dict[str, Any]:
    """The task instance whose Execution API request this thread serves. Fails closed: a
    token that did not verify, or one whose task instance is gone (an older try's process
    still running), is refused, never served with this server's own credentials."""
    ti_id = _TASK_INSTANCE.get()
    if not isinstance(ti_id, UUID):
        raise AccessDenied("access denied: the task's Execution API token did not verify")
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.execute(select(
            TaskInstance.dag_id, TaskInstance.task_id, TaskInstance.run_id,
            TaskInstance.map_index, TaskInstance.try_number).where(
            TaskInstance.id == ti_id)).one_or_none()
    if row is None:
        raise AccessDenied("access denied: the task instance of this token is not current "
                           "(cleared or retried)")
    return {"dag_id": row.dag_id, "task_id": row.task_id, "run_id": row.run_id,
            "map_index": row.map_index, "try_number": row.try_number}


class MLSecretsPlugin(AirflowPlugin):
    """Mounts ``/mlsecrets/v1`` in the API server and the task-identity middleware."""

    name = "mlsecrets"
    fastapi_apps = [  # noqa: RUF012 - the base class declares these as lists
        {"app": create_app(verifiers=(airflow_user,)), "url_prefix": URL_PREFIX,
         "name": "mlsecrets"}]
    fastapi_root_middlewares = [  # noqa: RUF012
        {"middleware": TaskIdentityMiddleware, "args": [], "kwargs": {},
         "name": "mlsecrets-task-identity"}]

