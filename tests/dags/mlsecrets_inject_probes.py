"""Test DAGs that try every way of leaking an injected value, and one that is denied."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import Any

from airflow.sdk import dag

from airflow_provider_mlsecrets.operators.inject import InjectSecretsOperator

ENV = {"API_KEY": "secret:ml/openai/api_key", "SHORT": "secret:ml/short",
       "DB_PASSWORD": "conn:mlsecrets_example_db.password",
       "REGISTRY": "var:model_registry_url"}
START = datetime(2026, 1, 1)


def print_and_return() -> dict[str, Any]:
    print("api key is", os.environ["API_KEY"], "short is", os.environ["SHORT"])
    print("db password is", os.environ["DB_PASSWORD"], file=sys.stderr)
    return {"leak": os.environ["API_KEY"]}


def raise_with_value() -> None:
    raise ValueError(f"could not log in with {os.environ['DB_PASSWORD']}")


def describe_env() -> dict[str, Any]:
    return {"names": sorted(os.environ), "lengths": {k: len(os.environ[k]) for k in ENV}}


@dag(dag_id="mlsecrets_inject_leaky", schedule=None, start_date=START, catchup=False)
def leaky() -> None:
    InjectSecretsOperator(task_id="leak", env=ENV, python_callable=print_and_return, retries=0)


@dag(dag_id="mlsecrets_inject_raises", schedule=None, start_date=START, catchup=False)
def raises() -> None:
    InjectSecretsOperator(task_id="boom", env=ENV, python_callable=raise_with_value, retries=0)


@dag(dag_id="mlsecrets_inject_env", schedule=None, start_date=START, catchup=False)
def env_only() -> None:
    InjectSecretsOperator(task_id="env", env=ENV, python_callable=describe_env,
                          base_env={"NOT_SECRET": "x"})


@dag(dag_id="mlsecrets_inject_denied", schedule=None, start_date=START, catchup=False,
     params={"marker": ""})
def denied() -> None:
    InjectSecretsOperator(task_id="denied", env={"K": "secret:other/not_granted"},
                          command=["touch", "{{ params.marker }}"], retries=3)


leaky()
raises()
env_only()
denied()


@dag(dag_id="mlsecrets_inject_decorated", schedule=None, start_date=START, catchup=False)
def decorated() -> None:
    from airflow.sdk import task

    @task.mlsecrets(env={"API_KEY": "secret:ml/openai/api_key"})  # type: ignore[attr-defined]
    def use_key(suffix: str) -> dict[str, Any]:
        print("key in the decorated task:", os.environ["API_KEY"])
        return {"chars": len(os.environ["API_KEY"]), "suffix": suffix}

    use_key("ok")


decorated()


@dag(dag_id="mlsecrets_inject_sealed", schedule=None, start_date=START, catchup=False,
     params={"ref": ""})
def sealed() -> None:
    InjectSecretsOperator(task_id="sealed", env={"SEALED": "{{ params.ref }}"}, retries=0,
                          command=[sys.executable, "-c",
                                   "import os; print('sealed value has',"
                                   " len(os.environ['SEALED']), 'chars')"])


sealed()


def big_and_odd(out_dir: str) -> dict[str, Any]:
    value = os.environ["ODD"]
    print("odd value follows:")
    print(value)
    with open(os.path.join(out_dir, "cwd.txt"), "w") as handle:
        handle.write(os.getcwd())
    if os.environ.get("RETURN_ODD") == "yes":
        return {"odd": value}
    return {"blob": "x" * 300_000}


@dag(dag_id="mlsecrets_inject_big", schedule=None, start_date=START, catchup=False,
     params={"out_dir": "", "return_odd": "no"})
def big() -> None:
    InjectSecretsOperator(task_id="big", env={"ODD": "secret:ml/odd"}, retries=0,
                          python_callable=big_and_odd, op_args=["{{ params.out_dir }}"],
                          cwd="{{ params.out_dir }}",
                          base_env={"RETURN_ODD": "{{ params.return_odd }}"})


big()


def leave_a_grandchild(marker: str) -> int:
    import subprocess as sp

    # a background process holding the output pipe and the secret in its environment
    sp.Popen(["sh", "-c", f"sleep 30; touch {marker}"])
    return 1


@dag(dag_id="mlsecrets_inject_grandchild", schedule=None, start_date=START, catchup=False,
     params={"marker": ""})
def grandchild() -> None:
    InjectSecretsOperator(task_id="callable", env={"K": "secret:ml/short"}, retries=0,
                          python_callable=leave_a_grandchild, op_args=["{{ params.marker }}"])
    InjectSecretsOperator(task_id="command", env={"K": "secret:ml/short"}, retries=0,
                          shell=True, command="(sleep 30; touch {{ params.marker }}.cmd) & "
                                              "echo started")


grandchild()
