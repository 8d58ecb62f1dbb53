"""Reaching the vault: in this process (embedded: HSM PIN and database here), or through the
HTTP service when ``MLSECRETS_URL`` is set (a URL and a token here, nothing else)."""

from __future__ import annotations

from typing import cast

from airflow_provider_mlsecrets._process import disable_core_dumps
from airflow_provider_mlsecrets.service import Vault
from airflow_provider_mlsecrets.settings import Settings


def open_vault(settings: Settings) -> Vault:
    """The vault the settings point at. A :class:`~.remote.RemoteVault` offers the same
    methods for what can be done over HTTP (a test checks their signatures match) and says
    so clearly for the rest, so callers need not know which one they hold."""
    disable_core_dumps()  # values will pass through this process either way
    if settings.url:
        from airflow_provider_mlsecrets.client.remote import RemoteVault

        return cast(Vault, RemoteVault(settings))
    return Vault(settings)
