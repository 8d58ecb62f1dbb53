"""Which DAGs share a worker pool, and so trust each other.

A pool is the set of processes that run DAG code as one Unix user with one set of
credentials. Under LocalExecutor that is the scheduler's user for every DAG; under Celery,
each queue's workers. Within a pool a DAG can read the others' processes, logs and task
tokens (the worker loads DAG files before ``run_as_user`` applies), so isolation between
DAGs holds only between pools (docs/service.md)."""

from __future__ import annotations

from collections import defaultdict

from airflow_provider_mlsecrets.doctor._deployment import (
    ISOLATING_EXECUTORS,
    QUEUE_EXECUTORS,
    SHARED_USER_EXECUTORS,
    Deployment,
)
from airflow_provider_mlsecrets.doctor._finding import Finding

POOLS_FIX = ("run DAGs that must not trust each other in separate worker pools: CeleryExecutor "
             "with a queue per pool, each pool's workers as their own Unix user with a broker "
             "user limited to that queue, or KubernetesExecutor (a pod per task); see "
             "docs/service.md")


def _names(dag_ids: list[str], limit: int = 8) -> str:
    shown = ", ".join(dag_ids[:limit])
    return shown + (f" and {len(dag_ids) - limit} more" if len(dag_ids) > limit else "")


def _team(team: str | None) -> str:
    return f" (team {team})" if team else ""


def check(d: Deployment) -> list[Finding]:
    if d.executor_error:
        return [Finding("pools.executor", "warning",
                        f"[core] executor could not be read ({d.executor_error}), so the "
                        "worker pools are unknown", "fix [core] executor")]
    out: list[Finding] = []
    if d.dags is None:
        out.append(Finding("pools.dags", "warning",
                           f"the DAGs' queues and executors were not read: the metadata database "
                           f"is not reachable from here ({d.dags_error}); only the configuration "
                           "was checked", "run the doctor where the metadata database is "
                           "reachable (the API server's host) to see which DAGs share a pool"))
    dags = d.dags or []
    for executor in d.executors:
        on_it = sorted(g.dag_id for g in dags if executor.name in g.executors
                       and g.team == executor.team)
        label = f"{executor.name}{_team(executor.team)}"
        if executor.name in SHARED_USER_EXECUTORS:
            if executor.default or len(on_it) > 1:
                who = f"DAGs {_names(on_it)} run" if on_it else "every DAG runs"
                out.append(Finding(
                    "pools.shared-user-executor", "hazard",
                    f"{label}: one trust domain. {who} as the scheduler's Unix user, which "
                    "also holds the JWT signing key: any DAG reads the others' processes, logs "
                    "and can forge their tasks' tokens (run_as_user applies only after the DAG "
                    "file was loaded)", POOLS_FIX))
        elif executor.name in ISOLATING_EXECUTORS:
            out.append(Finding("pools.isolating-executor", "ok",
                               f"{label}: every task in a container of its own",
                               "keep the JWT signing key and broker credentials out of the "
                               "task image and pod environment"))
        elif executor.name in QUEUE_EXECUTORS:
            out.extend(_queues(d, executor.name, executor.team))
        else:
            out.append(Finding("pools.unknown-executor", "warning",
                               f"{label}: the doctor does not know how this executor separates "
                               "DAGs; treat all DAGs on it as one trust domain", POOLS_FIX))
    return out


def _queues(d: Deployment, executor: str, team: str | None) -> list[Finding]:
    label = f"{executor}{_team(team)}"
    if d.dags is None:
        default = d.conf("operators", "default_queue") or "default"
        return [Finding("pools.queues-unknown", "warning",
                        f"{label}: every DAG whose tasks name no queue runs on queue "
                        f"'{default}'; which DAGs do could not be read", POOLS_FIX)]
    by_queue: dict[str, list[str]] = defaultdict(list)
    users: dict[str, set[str]] = defaultdict(set)
    for dag in d.dags:
        if executor in dag.executors and dag.team == team:
            for queue in dag.queues:
                by_queue[queue].append(dag.dag_id)
                users[queue] |= dag.run_as_users
    dag_count = len({g for ids in by_queue.values() for g in ids})
    if len(by_queue) == 1 and dag_count > 1:
        (queue, ids), = by_queue.items()
        return [Finding("pools.one-queue", "hazard",
                        f"{label}: one queue ('{queue}') for all DAGs ({_names(sorted(ids))}): "
                        "they share one worker pool, one trust domain", POOLS_FIX)]
    out = []
    for queue, ids in sorted(by_queue.items()):
        if len(ids) == 1:
            out.append(Finding("pools.queue", "ok", f"{label}: queue '{queue}' runs only "
                               f"DAG {ids[0]}"))
            continue
        why = (" and as the same Unix user" if len(users[queue]) == 1 else
               " (run_as_user differs, which separates their processes but not the worker's "
               "user, its broker credentials or the DAG files it loads)")
        out.append(Finding("pools.shared-queue", "warning",
                           f"{label}: DAGs {_names(sorted(ids))} share queue '{queue}'{why}: "
                           "they trust each other", "fine if they belong to one team; "
                           "otherwise give each its own queue and pool"))
    return out
