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
    for (host, user), owners in users.items():
        if len(owners) > 1:
            out.append(Finding("broker.shared-user", "hazard",
                               f"{', '.join(owners)} use the same broker user '{user}' at "
                               f"{host}", FIX))
    return out
