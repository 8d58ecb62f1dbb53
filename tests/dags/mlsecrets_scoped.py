"""Two DAGs whose workers hold no secrets backend and no vault settings: each asks for its
own connection and for the other DAG's, through the Execution API. The API server's backend
answers as ``dag:DAG_ID``, so each gets its own and is refused the other's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import BaseHook, dag, task


def _probe(own: str, other: str) -> dict[str, Any]:
    result: dict[str, Any] = {"own": len(BaseHook.get_connection(own).password or "")}
    try:
        BaseHook.get_connection(other)
        result["other"] = "served"
    except Exception as exc:  # refused: which way is part of the result
        result["other"] = type(exc).__name__
    return result


def _build(name: str, own: str, other: str) -> None:
    @dag(dag_id=f"mlsecrets_scope_{name}", schedule=None, start_date=datetime(2026, 1, 1),
         catchup=False)
    def scoped() -> None:
        @task
        def probe() -> dict[str, Any]:
            return _probe(own, other)

        probe()

    scoped()


_build("a", "scope_a_db", "scope_b_db")
_build("b", "scope_b_db", "scope_a_db")


def _own_length() -> int:
    import os

    return len(os.environ["KEY"])


@dag(dag_id="mlsecrets_scope_inject_a", schedule=None, start_date=datetime(2026, 1, 1),
     catchup=False, params={"path": "scoped/a_key"})
def scoped_injection() -> None:
    from airflow_provider_mlsecrets.operators.inject import InjectSecretsOperator

    InjectSecretsOperator(task_id="inject", env={"KEY": "secret:{{ params.path }}"},
                          python_callable=_own_length, retries=0)


scoped_injection()
