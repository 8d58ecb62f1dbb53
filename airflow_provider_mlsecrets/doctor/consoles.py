"""Task output repeated on a long-running process's console, where Airflow does not mask it.

Airflow's task supervisor can copy every line a task prints or logs to its own logger
(``subprocess_logs_to_stdout``). In a process whose logging Airflow core configured (the
scheduler, a Celery worker) that logger masks nothing: neither the values the task registered
(``mask_secret``, every value this provider serves) nor those of core's own masker. In a
process configured by the Task SDK (a KubernetesExecutor pod) it masks with the masker the
task's values reach. The task log file is masked either way. ``tests/test_doctor.py`` pins
both on the installed Airflow.

Airflow 3.3: LocalExecutor always copies (its workers are the scheduler's child processes, so
the copy lands on the scheduler's stdout); CeleryExecutor copies when ``[celery]
task_logs_to_stdout`` (or ``[logging] task_logs_to_stdout``) is true; KubernetesExecutor
always copies into the pod's log, masked, so nothing is reported for it.
"""

from __future__ import annotations

from airflow_provider_mlsecrets.doctor._deployment import Deployment
from airflow_provider_mlsecrets.doctor._finding import Finding

TRUE = frozenset({"true", "t", "1", "yes", "y", "on"})
SINK_FIX = ("treat that console (its stdout/stderr, journald, 'docker logs', 'kubectl logs') as "
            "holding secrets: keep it out of shared log sinks and readable only by people "
            "who may read the secrets the tasks use")


def _celery_copies(d: Deployment) -> bool:
    override = d.conf("celery", "task_logs_to_stdout")  # unset: falls back to [logging]
    if override is not None:
        return override.strip().lower() in TRUE
    return d.flag("logging", "task_logs_to_stdout")


def check(d: Deployment) -> list[Finding]:
    out: list[Finding] = []
    used = {e for g in d.dags or [] for e in g.executors}
    local = sorted({f"LocalExecutor (team {e.team})" if e.team else "LocalExecutor"
                    for e in d.executors if e.name == "LocalExecutor"
                    and (e.default or d.dags is None or e.name in used)})
    if local:
        out.append(Finding(
            "consoles.local-executor", "warning",
            f"{', '.join(local)}: Airflow copies every line a task prints or logs to the "
            "scheduler's console, and does not mask that copy (the task log is masked); a "
            "secret a task prints is in the clear there",
            SINK_FIX + "; or run tasks on separate workers (CeleryExecutor without "
            "task_logs_to_stdout, or KubernetesExecutor); see docs/airflow.md"))
    if "CeleryExecutor" in d.executor_kinds() and _celery_copies(d):
        out.append(Finding(
            "consoles.celery-task-logs-to-stdout", "warning",
            "[celery] task_logs_to_stdout is on: Airflow copies every line a task prints or "
            "logs to the Celery worker's console, and does not mask that copy (the task log "
            "is masked)",
            SINK_FIX + "; or set [celery] task_logs_to_stdout = False"))
    return out
