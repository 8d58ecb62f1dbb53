"""The maintenance DAG: every minute, ask the vault to evaluate the alert rules and deliver
what is due, so alerts go out within a minute even where nothing wakes the vault's own
evaluator (records written by other processes, a vault served without its background
thread). The task holds no vault: through ``MLSECRETS_URL`` it calls ``POST
/v1/alerts/evaluate`` as a principal with ``audit`` (an auditor), and the service does the
work; embedded, it runs the pass itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import DAG, dag, task

log = logging.getLogger(__name__)


def create_maintenance_dag(
    dag_id: str = "mlsecrets_maintenance",
    *,
    schedule: str | None = "* * * * *",
    start_date: datetime | None = None,
    mlsecrets_conn_id: str = "mlsecrets_maintenance",
    tags: Sequence[str] = ("mlsecrets",),
    **dag_kwargs: Any,
) -> DAG:
    """Build the maintenance DAG.

    :param mlsecrets_conn_id: the connection whose ``token_file`` extra names the principal
        (role ``auditor``: ``audit`` on ``**``); if it does not exist, ``MLSECRETS_TOKEN_FILE``.
    """

    @dag(dag_id=dag_id, schedule=schedule, catchup=False, max_active_runs=1,
         start_date=start_date or datetime(2026, 1, 1, tzinfo=timezone.utc), tags=list(tags),
         default_args={"retries": 0, "execution_timeout": timedelta(minutes=5)},
         doc_md=__doc__, **dag_kwargs)
    def maintenance() -> None:
        @task
        def evaluate_alerts() -> dict[str, Any]:
            from airflow_provider_mlsecrets.plain import plain
            from airflow_provider_mlsecrets.rotation.dag import task_vault

            vault, caller = task_vault(mlsecrets_conn_id, "the maintenance DAG")
            result = vault.alerts.run(caller)
            log.info("alerts: %d record(s) evaluated, %d raised, %d delivered, %d failed, %d "
                     "waiting", result.records, result.raised, result.sent, result.failed,
                     result.pending)
            for error in result.errors:
                log.warning("alert delivery failed: %s", error)
            out: dict[str, Any] = plain(result)
            return out

        evaluate_alerts()

    built: DAG = maintenance()
    return built
