"""A task that gets a connection and a variable from the mlsecrets vault and proves it,
without printing either.

Run it with the backend configured (docs/airflow.md), for example:

    AIRFLOW__SECRETS__BACKEND=airflow_provider_mlsecrets.secrets.backend.MLSecretsBackend \\
    AIRFLOW__SECRETS__BACKEND_KWARGS='{"token_file": "/path/to/pipeline.token"}' \\
    airflow dags test mlsecrets_example_connections

It expects ``connections/mlsecrets_example_db`` and ``variables/mlsecrets_example_endpoint``
in the vault, and the pipeline principal granted ``inject`` on them.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from airflow.sdk import BaseHook, Variable, dag, task


@dag(dag_id="mlsecrets_example_connections", schedule=None, start_date=datetime(2026, 1, 1),
     catchup=False, tags=["mlsecrets", "example"])
def mlsecrets_example_connections() -> None:
    @task
    def use_credentials() -> dict[str, int]:
        conn = BaseHook.get_connection("mlsecrets_example_db")
        endpoint = Variable.get("mlsecrets_example_endpoint")
        password = conn.password or ""
        # Evidence without the values: sizes and a short one-way fingerprint.
        print(f"connection {conn.conn_id}: {conn.conn_type} on {conn.host}, "
              f"password of {len(password)} characters")
        print(f"variable mlsecrets_example_endpoint: {len(endpoint)} characters, sha256 prefix "
              f"{hashlib.sha256(endpoint.encode()).hexdigest()[:8]}")
        # Only sizes go to XCom: XCom is never masked.
        return {"password_chars": len(password), "endpoint_chars": len(endpoint)}

    use_credentials()


mlsecrets_example_connections()
