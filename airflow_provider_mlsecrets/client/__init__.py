"""Reaching the vault: in this process (embedded: HSM PIN and database here), or through the
HTTP service when ``MLSECRETS_URL`` is set (a URL and a token here, nothing else)."""

from __future__ import annotations

import os
from typing import cast

from sqlalchemy.engine import make_url

from airflow_provider_mlsecrets._process import disable_core_dumps
from airflow_provider_mlsecrets.errors import ConfigurationError
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


def open_existing_vault(settings: Settings) -> Vault:
    """As :func:`open_vault`, for a hook or a secrets backend: they use a vault someone
    set up and never make one, so a SQLite vault file that does not exist is a missing
    setting, said as such, not an empty vault created wherever ``$HOME`` points."""
    if not settings.url:
        url = make_url(settings.db_url)
        database = url.database or ""
        if url.get_backend_name() == "sqlite" and database not in ("", ":memory:") \
                and not os.path.exists(database):
            raise ConfigurationError(
                f"no vault is configured for this process ({database} does not exist, and "
                "nothing was created): set MLSECRETS_URL to the vault service (the Airflow "
                "API server's /mlsecrets, or 'mlsecrets serve') with a principal's token "
                "file, or MLSECRETS_HOME / MLSECRETS_DB_URL and the HSM settings of an "
                "initialised vault ('mlsecrets init'); see docs/configuration.md")
    return open_vault(settings)
