"""DAGs run by a real scheduler and LocalExecutor whose workers hold no vault settings (the
shared ``[secrets] backend`` makes ``MLSecretsBackend`` a relay there):

- ``mlsecrets_denied_lookups`` asks for a variable and a connection its DAG was not granted;
  each task must fail at once with "access denied", once per try (one retry);
- ``mlsecrets_masked_values`` prints a variable with a harmless-looking key and a field of a
  JSON variable, both granted: the task log must show ``***`` instead.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from airflow.sdk import Connection, Variable, dag, task

_RETRY = {"retries": 1, "retry_delay": timedelta(seconds=1)}


@dag(dag_id="mlsecrets_denied_lookups", schedule=None, start_date=datetime(2026, 1, 1),
     catchup=False, default_args=_RETRY)
def denied_lookups() -> None:
    @task
    def variable() -> None:
        Variable.get("denied_var")

    @task
    def connection() -> None:
        Connection.get("denied_db")

    variable()
    connection()


denied_lookups()


@dag(dag_id="mlsecrets_masked_values", schedule=None, start_date=datetime(2026, 1, 1),
     catchup=False)
def masked_values() -> None:
    @task
    def show() -> int:
        log = logging.getLogger("airflow.task")
        value = Variable.get("masked_endpoint")
        leaf = json.loads(Variable.get("masked_json"))["api_key"]
        log.info("variable says %s", value)
        log.info("json leaf says %s", leaf)
        print(f"printed variable {value}")  # stdout lands in the task log too
        return len(value)

    show()


masked_values()
