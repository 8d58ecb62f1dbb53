"""The vault service inside the Airflow API server, and the two identities only Airflow can
vouch for:

- **people**: an Airflow user's bearer token (from ``POST /auth/token`` or the UI) is verified
  by Airflow's auth manager; the user acts as principal ``airflow-user:NAME`` if a security
  engineer created one, else as ``airflow-role:ROLE`` for one of the user's Airflow roles;
- **tasks**: a task's Connection or Variable lookup that falls through the Execution API to
  this server carries the task instance's signed token, which Airflow validates;
  :class:`~.task_identity.TaskIdentityMiddleware` hands it to the secrets backend here,
  which then acts as principal ``dag:DAG_ID`` while that task instance's current try is
  running, and answers any refusal with a final HTTP 403 (see :mod:`.task_identity`).
  (Task code itself never sees that token, so a task cannot present it to ``/mlsecrets/v1``
  directly; see docs/service.md.)

It also adds the security console, a top-level "Secrets" page in Airflow's navigation
(:mod:`..console`, docs/console.md), served at ``/mlsecrets/console/``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from airflow_provider_mlsecrets.api.app import create_app
from airflow_provider_mlsecrets.api.task_identity import (
    TaskIdentityMiddleware,
    in_execution_request,
    task_identity,
)
from airflow_provider_mlsecrets.console import ConsoleBridge, create_console_app, external_view

URL_PREFIX = "/mlsecrets"
log = logging.getLogger(__name__)
__all__ = ["MLSecretsPlugin", "TaskIdentityMiddleware", "airflow_user",
           "in_execution_request", "task_identity"]


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


def _identity_middleware(app: Any) -> TaskIdentityMiddleware:
    """The task-identity middleware. Airflow builds it in the API server only (the plugin
    module itself is imported by every process), which is where the deployment's hazards
    are reported once, at start-up, as ``mlsecrets doctor`` reports them: in a thread, so
    reading the DAGs never holds up the server."""
    from airflow_provider_mlsecrets.doctor import log_findings_once

    threading.Thread(target=_report, args=(log_findings_once,), name="mlsecrets-doctor",
                     daemon=True).start()
    _SERVICE.state.alerts.start()  # the alert evaluator lives where the vault is served
    return TaskIdentityMiddleware(app)


def _report(log_findings_once: Any) -> None:
    try:
        log_findings_once(log)
    except Exception as exc:  # a report that fails must never take the server down
        log.warning("mlsecrets doctor could not run at start-up (%s); run 'airflow "
                    "mlsecrets doctor'", type(exc).__name__)


def _announce(path: str, version: int | None) -> str:
    """A rotation made through the plugin's service emits the DAG's asset event."""
    from airflow_provider_mlsecrets.rotation.events import announce_rotated

    return announce_rotated(path, version)


def _service() -> Any:
    """The vault's app behind the console's front door, which serves the page at
    ``/console/`` and lets it call the read-only insight routes with the user's Airflow
    session (:mod:`..console._bridge`). One app, so Airflow mounts one prefix."""
    app = create_app(verifiers=(airflow_user,), announce=_announce)
    app.add_middleware(ConsoleBridge, console=create_console_app())
    return app


_SERVICE = _service()


class MLSecretsPlugin(AirflowPlugin):
    """Mounts ``/mlsecrets/v1`` and the console page in the API server, the console's entry
    in Airflow's navigation, and the task-identity middleware."""

    name = "mlsecrets"
    fastapi_apps = [  # noqa: RUF012 - the base class declares these as lists
        {"app": _SERVICE, "url_prefix": URL_PREFIX, "name": "mlsecrets"}]
    fastapi_root_middlewares = [  # noqa: RUF012
        {"middleware": _identity_middleware, "args": [], "kwargs": {},
         "name": "mlsecrets-task-identity"}]
    external_views = [external_view(URL_PREFIX)]  # noqa: RUF012
