"""A "training" step that gets an API key and a database password injected into its
environment, and proves it had them without printing them: it writes a salted SHA-256 of
each to a file, next to the salt, so someone who knows the values can check.

Expects ``ml/openai/api_key`` in the vault and the connection ``mlsecrets_example_db``, with
the pipeline principal granted ``inject`` on both (see docs/airflow.md).
"""

from __future__ import annotations

import sys
from datetime import datetime

from airflow.sdk import dag

from airflow_provider_mlsecrets.operators.inject import InjectSecretsOperator

TRAIN = """
import hashlib, json, os, secrets, tempfile
salt = secrets.token_hex(16)
proof = {name: hashlib.sha256((salt + os.environ[name]).encode()).hexdigest()
         for name in ("OPENAI_API_KEY", "DB_PASSWORD")}
out = os.environ.get("MLSECRETS_EXAMPLE_OUT") or tempfile.mkdtemp(prefix="mlsecrets-training-")
os.makedirs(out, mode=0o700, exist_ok=True)
with open(os.path.join(out, "proof.json"), "w") as handle:
    json.dump({"salt": salt, "sha256": proof}, handle)
print("training saw", ", ".join(f"{k} ({len(os.environ[k])} chars)" for k in proof),
      "- proof in", os.path.join(out, "proof.json"))
"""


@dag(dag_id="mlsecrets_example_training", schedule=None, start_date=datetime(2026, 1, 1),
     catchup=False, tags=["mlsecrets", "example"],
     params={"out_dir": ""})
def mlsecrets_example_training() -> None:
    InjectSecretsOperator(
        task_id="train",
        env={"OPENAI_API_KEY": "secret:ml/openai/api_key",
             "DB_PASSWORD": "conn:mlsecrets_example_db.password"},
        base_env={"MLSECRETS_EXAMPLE_OUT": "{{ params.out_dir }}"},
        command=[sys.executable, "-c", TRAIN],
    )


mlsecrets_example_training()
