"""Plain HTTP off the host: tokens, passwords and secret values in clear text."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from airflow_provider_mlsecrets.doctor._deployment import Deployment
from airflow_provider_mlsecrets.doctor._finding import Finding


def _loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(d: Deployment) -> list[Finding]:
    urls = [("MLSECRETS_URL", d.environ.get("MLSECRETS_URL"),
             "tokens and secret values"),
            ("[api] base_url", d.conf("api", "base_url"), "Airflow users' passwords and tokens"),
            ("[core] execution_api_server_url", d.conf("core", "execution_api_server_url"),
             "tasks' tokens and the secrets served to them")]
    out = []
    for name, url, what in urls:
        if not url or not url.lower().startswith("http://"):
            continue
        host = urlsplit(url).hostname
        if not _loopback(host):
            out.append(Finding("transport.plain-http", "hazard",
                               f"{name} is plain HTTP to {host}: {what} cross the network in "
                               "clear text", "use https:// (TLS on the API server, "
                               "[api] ssl_cert / ssl_key, or a TLS proxy in front of it)"))
    return out
