"""The security console: a page in the Airflow UI (a nav entry of the plugin, see
:mod:`..api.airflow_plugin`) that shows the vault's inventory, principals, rotation, audit
trail and keys, from the read-only ``/v1/insight`` routes, to whoever the vault lets see them.

The page is static (HTML, one script, one stylesheet, a vendored Chart.js); its data comes
from the vault with the signed-in Airflow user's session, which :class:`ConsoleBridge` turns
into the bearer credential the vault's routes expect, server-side, so the page's script never
holds a token."""

from __future__ import annotations

from airflow_provider_mlsecrets.console._app import (
    CONSOLE_PATH,
    HEADERS,
    STATIC,
    create_console_app,
    external_view,
)
from airflow_provider_mlsecrets.console._bridge import BRIDGED, CONSOLE_HEADER, ConsoleBridge

__all__ = ["BRIDGED", "CONSOLE_HEADER", "CONSOLE_PATH", "HEADERS", "STATIC", "ConsoleBridge",
           "create_console_app", "external_view"]
