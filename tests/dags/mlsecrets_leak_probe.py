"""A test DAG that tries to leak what it was given: it prints a variable whose key looks
harmless and a connection's password. The task log must show neither value."""

from __future__ import annotations

import logging
from datetime import datetime

from airflow.sdk import BaseHook, Variable, dag, task


@dag(dag_id="mlsecrets_leak_probe", schedule=None, start_date=datetime(2026, 1, 1),
     catchup=False)
def mlsecrets_leak_probe() -> None:
    @task
    def leak() -> int:
        value = Variable.get("model_registry_url")
        conn = BaseHook.get_connection("mlsecrets_example_db")
        log = logging.getLogger("airflow.task")
        log.info("variable says %s", value)
        log.info("password says %s", conn.password)
        return len(value)

    leak()


mlsecrets_leak_probe()
