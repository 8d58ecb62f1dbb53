"""Who is asking, as Airflow knows it: the task instance inside a task, else the component.

Read at lookup time from ``airflow.sdk.get_current_context()``, which is reliable during
template rendering and execute, under ``dag.test()`` and in real workers (the
``AIRFLOW_CTX_*`` variables are set only just before execute and can be stale).
"""

from __future__ import annotations

import os
import sys

from airflow_provider_mlsecrets.audit.record import ContextValue
from airflow_provider_mlsecrets.service._core import process_context

_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer", "celery", "standalone")


def component_name() -> str:
    """The Airflow component this process is, from its command line."""
    argv = " ".join(sys.argv[1:3])
    for name in _COMPONENTS:
        if name in argv:
            return f"airflow {name}"
    return "airflow " + (sys.argv[1] if len(sys.argv) > 1 else os.path.basename(sys.argv[0]))


def caller_context() -> dict[str, ContextValue]:
    """The audit context of the current lookup."""
    context = process_context(component_name())
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:  # not inside a task: the component's name is all there is
        return context
    context.update(component="task", dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id,
                   try_number=getattr(ti, "try_number", None),
                   map_index=getattr(ti, "map_index", None))
    return context
