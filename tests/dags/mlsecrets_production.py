"""DAGs that run next to example_dags/ in the production layout (tests/e2e/production.py,
``scripts/demo``), on workers with no vault settings, each as its own ``dag:`` principal:

- ``mlsecrets_training_callable``: the training step as a callable (``@task.mlsecrets``)
  that prints the key it was given (the task log shows ``***``), writes to stderr, and
  returns a salted hash of each value and the names of the ``MLSECRETS_*`` settings its
  child process sees, never a value;
- ``mlsecrets_follow_rotation``: scheduled on ``secret_asset("ml/webhook/signing_key")``
  as docs/rotation.md shows, it runs after the rotation DAG rotated that secret, reads its
  triggering events (by the asset: they are listed under the ``mlsecrets-rotated`` alias
  too) and the new value, and returns the versions, a salted hash of the value and the
  names of the worker's ``MLSECRETS_*`` settings.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import datetime
from typing import Any

from airflow.sdk import Variable, dag, task

from airflow_provider_mlsecrets.rotation.dag import secret_asset

SIGNING_KEY = secret_asset("ml/webhook/signing_key")


def salted(value: str) -> dict[str, str]:
    """Proof of a value that only someone who knows it can check."""
    salt = secrets.token_hex(16)
    return {"salt": salt, "sha256": hashlib.sha256((salt + value).encode()).hexdigest()}


@dag(dag_id="mlsecrets_training_callable", schedule=None, start_date=datetime(2026, 1, 1),
     catchup=False, tags=["mlsecrets"])
def training_callable() -> None:
    @task.mlsecrets(env={"OPENAI_API_KEY": "secret:ml/openai/api_key",  # type: ignore[attr-defined]
                         "DB_PASSWORD": "conn:mlsecrets_example_db.password"}, retries=0)
    def train() -> dict[str, Any]:
        import os
        import sys

        print(f"training with OPENAI_API_KEY={os.environ['OPENAI_API_KEY']}")  # shows ***
        print(f"DB_PASSWORD has {len(os.environ['DB_PASSWORD'])} characters", file=sys.stderr)
        return {"api_key": salted(os.environ["OPENAI_API_KEY"]),
                "db_password": salted(os.environ["DB_PASSWORD"]),
                "child_settings": sorted(k for k in os.environ if k.startswith("MLSECRETS_"))}

    train()


training_callable()


@dag(dag_id="mlsecrets_follow_rotation", schedule=SIGNING_KEY,
     start_date=datetime(2026, 1, 1), catchup=False, tags=["mlsecrets"])
def follow_rotation() -> None:
    @task
    def reconnect(*, triggering_asset_events: Any = None) -> dict[str, Any]:
        events = (triggering_asset_events or {}).get(SIGNING_KEY, ())
        for event in events:
            print(event.asset.uri, "now at version", event.extra["version"])
        value = Variable.get("mlsecrets:ml/webhook/signing_key")  # as dag:<this DAG>
        return {"uris": [event.asset.uri for event in events],
                "versions": [event.extra["version"] for event in events], **salted(value),
                "worker_settings": sorted(k for k in os.environ if k.startswith("MLSECRETS_"))}

    reconnect()


follow_rotation()
