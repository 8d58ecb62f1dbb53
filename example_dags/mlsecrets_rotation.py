"""Rotates every secret whose rotation policy is due, the key-encryption key every 90 days,
and verifies the audit chain, hourly. Each rotated secret emits an asset event for
``mlsecrets://PATH``: schedule a DAG on ``secret_asset("PATH")`` to follow it.

Configure the rotating principal (role ``rotator``) through the ``mlsecrets_rotation``
connection's ``token_file`` extra, or ``MLSECRETS_TOKEN_FILE`` (see docs/rotation.md). Set
``MLSECRETS_AUDIT_CHECKPOINT_URL`` to a folder URL (``s3://bucket/prefix/``, ``file:///…/``) to
publish an audit checkpoint there every run.
"""

from __future__ import annotations

from airflow_provider_mlsecrets.rotation.dag import create_rotation_dag

dag = create_rotation_dag("mlsecrets_rotation", schedule="@hourly", kek_every="90d")
