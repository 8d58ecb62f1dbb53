"""Every minute: the vault evaluates its alert rules over the audit trail and delivers what
they raised through the configured Airflow notifiers (docs/alerts.md).

Configure the principal (role ``auditor``) through the ``mlsecrets_maintenance``
connection's ``token_file`` extra, or ``MLSECRETS_TOKEN_FILE``; workers reach the vault
through ``MLSECRETS_URL`` and hold no key.
"""

from __future__ import annotations

from airflow_provider_mlsecrets.alerts.dag import create_maintenance_dag

# paused when first seen: unpause it once its principal is configured
dag = create_maintenance_dag("mlsecrets_maintenance", schedule="* * * * *",
                             is_paused_upon_creation=True)
