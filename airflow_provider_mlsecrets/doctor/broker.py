"""The Celery broker: each queued message carries a task's token, so whoever reads a
queue can act as that queue's tasks. Pools share nothing only if each pool's workers have
a broker user that reaches their own queue alone."""

from __future__ import annotations

from urllib.parse import urlsplit

from airflow_provider_mlsecrets.doctor._deployment import Deployment
from airflow_provider_mlsecrets.doctor._finding import Finding

FIX = ("give each worker pool its own broker user limited to its queue (Redis ACL users, or "
       "a RabbitMQ user and vhost per pool); see docs/service.md")


def check(d: Deployment) -> list[Finding]:
    teams = sorted({e.team for e in d.executors if e.name == "CeleryExecutor"},
                   key=lambda t: t or "")
    out: list[Finding] = []
    users: dict[tuple[str, str], list[str]] = {}
    for team in teams:
        label = f"team {team}" if team else "[celery] broker_url"
        url = d.conf("celery", "broker_url", team=team)
        if not url:
            continue
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        if not parts.username and not parts.password:
            out.append(Finding("broker.no-credentials", "hazard",
                               f"{label}: the broker at {host} takes no credentials: every "
                               "process that reaches it reads every queue, and with it the "
                               "queued tasks' tokens", FIX))
            continue
        if not parts.username:
            out.append(Finding("broker.default-user", "warning",
                               f"{label}: the broker's default user (a password only): one "
                               "credential for every queue", FIX))
            continue
        users.setdefault((host, parts.username), []).append(team or "global")
        out.append(Finding("broker.user", "ok",
                           f"{label}: broker user '{parts.username}' at {host} (the "
                           "scheduler's; workers' own URLs are not visible from here)",
                           "check that each pool's workers use a user limited to its queue"))
    for team in teams:
        out += _results_and_control(d, team)
    for (host, user), owners in users.items():
        if len(owners) > 1:
            out.append(Finding("broker.shared-user", "hazard",
                               f"{', '.join(owners)} use the same broker user '{user}' at "
                               f"{host}", FIX))
    return out


RESULTS_FIX = ("give the pools a result backend they cannot read each other's results or "
               "anything else through: a Redis ACL user per pool limited to "
               "'celery-task-meta-*' (docs/service.md, worker pools that share nothing)")


def _results_and_control(d: Deployment, team: str | None) -> list[Finding]:
    """What else a Celery worker holds: the result backend's credentials, and the remote
    control channel through which it can inspect (and command) every other worker."""
    label = f"team {team}" if team else "[celery]"
    out: list[Finding] = []
    backend = d.conf("celery", "result_backend", team=team) or "db+ (the default)"
    scheme = backend.split(":", 1)[0].lower()
    if scheme.startswith("db+"):
        out.append(Finding("broker.result-backend", "hazard",
                           f"{label}: the Celery result backend is the Airflow metadata "
                           "database, so every worker holds its credentials (and can move "
                           "another DAG's task into its own queue)", RESULTS_FIX))
    elif scheme == "rpc":
        out.append(Finding("broker.result-backend", "hazard",
                           f"{label}: the rpc:// result backend needs every worker to publish "
                           "to the broker's default exchange, so a pool can write into any "
                           "queue", RESULTS_FIX))
    else:
        out.append(Finding("broker.result-backend", "ok",
                           f"{label}: result backend '{scheme}://'", RESULTS_FIX))
    if d.flag("celery", "worker_enable_remote_control"):
        out.append(Finding("broker.remote-control", "warning",
                           f"{label}: Celery remote control is on: a worker can inspect and "
                           "command the others through the broker's pidbox exchanges",
                           "set [celery] worker_enable_remote_control = False (and start "
                           "workers without gossip and mingle)"))
    return out
