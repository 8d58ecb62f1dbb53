"""A callable that prints, run by a real scheduler and LocalExecutor (issue 15, item 1):
under Airflow 3's task supervisor the forked child once lost its stdout and stderr and died
on its first print. Both lines must reach the task log, the injected value as ``***``."""

from __future__ import annotations

import os
import sys
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="mlsecrets_callable_prints", schedule=None, start_date=datetime(2026, 1, 1),
     catchup=False)
def callable_prints() -> None:
    @task.mlsecrets(env={"ENDPOINT": "var:masked_endpoint"}, retries=0)  # type: ignore[attr-defined]
    def shout() -> int:
        print(f"callable printed {os.environ['ENDPOINT']}")
        print("callable warned", file=sys.stderr)
        return len(os.environ["ENDPOINT"])

    shout()


callable_prints()
