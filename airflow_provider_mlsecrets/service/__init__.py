"""Service: the vault, composing keys, envelope, store, policy and audit."""

from airflow_provider_mlsecrets.service._core import Caller
from airflow_provider_mlsecrets.service.vault import Vault

__all__ = ["Caller", "Vault"]
