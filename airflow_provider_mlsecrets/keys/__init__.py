"""Keys: the HSM boundary. Nothing outside this package talks PKCS#11."""

from airflow_provider_mlsecrets.keys.interface import KekId, KeyInfo, KeyProvider, MacKey, kek_label

__all__ = ["KekId", "KeyInfo", "KeyProvider", "MacKey", "kek_label"]
