"""The rotation DAG with a key-encryption-key cadence short enough to be due at once."""

from __future__ import annotations

from airflow_provider_mlsecrets.rotation.dag import create_rotation_dag

dag = create_rotation_dag("mlsecrets_rotation_keys", schedule=None, kek_every="1s")
