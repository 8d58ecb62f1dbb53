"""airflow-provider-mlsecrets: HSM-backed secrets for ML pipelines on Apache Airflow.

Importing this package touches neither the HSM nor the database.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
DOCUMENTATION = "https://pypi.org/project/airflow-provider-mlsecrets/"


def get_provider_info() -> dict[str, Any]:
    """Airflow's provider metadata (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-provider-mlsecrets",
        "name": "ML Secrets",
        "description": "HSM-backed envelope-encrypted secrets with deny-by-default access and "
                       "a tamper-evident audit trail, for ML pipelines.",
        "versions": [__version__],
        "documentation-url": DOCUMENTATION,
        "integrations": [{
            "integration-name": "ML Secrets",
            "external-doc-url": "https://pypi.org/project/airflow-provider-mlsecrets/",
            "tags": ["security"],
        }],
        "hooks": [{"integration-name": "ML Secrets",
                   "python-modules": ["airflow_provider_mlsecrets.hooks.vault"]}],
        "connection-types": [{
            "hook-class-name": "airflow_provider_mlsecrets.hooks.vault.MLSecretsHook",
            "hook-name": "ML Secrets vault",
            "connection-type": "mlsecrets",
            "conn-fields": {
                "token_file": {"label": "Principal token file",
                               "schema": {"type": ["string", "null"]},
                               "description": "a file holding the principal's token "
                                              "(everything else comes from MLSECRETS_*)"},
            },
            "ui-field-behaviour": {
                # the raw Extra field too: token_file above is the one setting it holds
                "hidden-fields": ["host", "schema", "login", "password", "port", "extra"],
                "relabeling": {},
                "placeholders": {},
            },
        }],
        "plugins": [{"name": "mlsecrets",
                     "plugin-class": "airflow_provider_mlsecrets.api.airflow_plugin."
                                     "MLSecretsPlugin"}],
        "secrets-backends": ["airflow_provider_mlsecrets.secrets.backend.MLSecretsBackend"],
        "cli": ["airflow_provider_mlsecrets.airflow_cli.get_cli_commands"],
        "task-decorators": [{"name": "mlsecrets",
                             "class-name": "airflow_provider_mlsecrets.decorators.inject."
                                           "mlsecrets_task"}],
        "operators": [{"integration-name": "ML Secrets",
                       "python-modules": ["airflow_provider_mlsecrets.operators.inject"]}],
    }
