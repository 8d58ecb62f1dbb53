"""airflow-provider-mlsecrets: HSM-backed secrets for ML pipelines on Apache Airflow.

Importing this package touches neither the HSM nor the database.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Airflow's provider metadata (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-provider-mlsecrets",
        "name": "ML Secrets",
        "description": "HSM-backed envelope-encrypted secrets with deny-by-default access and "
                       "a tamper-evident audit trail, for ML pipelines.",
        "versions": [__version__],
    }
