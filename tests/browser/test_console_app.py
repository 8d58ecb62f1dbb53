"""The console page's server side, without a browser: its headers (no cache, scripts and
requests from this origin only, framed only by Airflow), a shell with no inline script, the
vendored chart library with its licence, the plugin's nav entry as Airflow reads it, and the
bridge that lets only the console's own read-only calls use the Airflow session."""

from __future__ import annotations

import asyncio
import re
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from fastapi.testclient import TestClient

from airflow_provider_mlsecrets.console import (
    BRIDGED,
    CONSOLE_HEADER,
    STATIC,
    ConsoleBridge,
    create_console_app,
)

JWT = "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


def test_the_page_is_served_uncached_under_a_strict_policy() -> None:
    client = TestClient(create_console_app())
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no CDN
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'self'"  # Airflow's own page frames it
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    for asset in ("console.js", "console.css", "chart.umd.min.js"):
        got = client.get(f"/static/{asset}")
        assert got.status_code == 200, asset
        assert got.headers["cache-control"] == "no-store"
        assert got.headers["content-security-policy"] == csp


def test_the_shell_has_no_inline_script_or_handler() -> None:
    html = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="static/' in attrs and not body.strip()
                           for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    script = (STATIC / "console.js").read_text()
    assert "innerHTML" not in script and "eval(" not in script
    assert "localStorage.setItem" not in script and "sessionStorage" not in script
    assert "document.cookie" not in script  # Airflow's session stays with the browser


def test_the_script_asks_only_read_only_routes_and_approves_nothing() -> None:
    """Every request the script makes is an insight GET, the insight export or the access
    review: nothing approves a break-glass request or acknowledges an alert (the bridge
    would refuse it anyway)."""
    script = (STATIC / "console.js").read_text()
    asked = set(re.findall(r'\bcall\("([^"]+)"', script))
    viewed = set(re.findall(r'\binsight\("([^"]+)"', script))
    assert asked == {"insight/", "insight/audit/export", "review"}
    assert {"alerts", "approvals", "me"} <= viewed
    assert all(re.fullmatch(r"[a-z/]+", v) for v in viewed)
    assert '"POST"' in script and script.count('"POST"') == 1  # the review


def test_the_chart_library_is_vendored_with_its_licence() -> None:
    library = (STATIC / "chart.umd.min.js").read_text()
    assert library.startswith("/*!\n * Chart.js v4.")
    licence = (STATIC / "chart.js.LICENSE.md").read_text()
    assert "MIT" in licence or "Permission is hereby granted" in licence


def test_the_plugin_puts_the_console_in_airflows_navigation() -> None:
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

    from airflow_provider_mlsecrets.api.airflow_plugin import MLSecretsPlugin

    [view] = MLSecretsPlugin.external_views
    parsed = ExternalViewResponse.model_validate(view)
    assert parsed.href == "mlsecrets/console/"  # relative: see the test below
    assert parsed.destination == "nav" and parsed.url_route == "secrets"
    [spec] = MLSecretsPlugin.fastapi_apps
    assert spec["url_prefix"] == "/mlsecrets"


def test_the_page_comes_through_the_mounted_app_without_the_vaults_headers() -> None:
    """Mounted as Airflow mounts it: the page is framed by Airflow and runs its own script,
    while the vault's routes keep their stricter headers."""
    from fastapi import FastAPI

    from airflow_provider_mlsecrets.api.airflow_plugin import MLSecretsPlugin

    [spec] = MLSecretsPlugin.fastapi_apps
    parent = FastAPI()
    parent.mount(spec["url_prefix"], spec["app"])
    client = TestClient(parent)
    page = client.get("/mlsecrets/console/")
    assert page.status_code == 200 and "static/console.js" in page.text
    assert page.headers.get_list("content-security-policy") == [
        page.headers["content-security-policy"]]
    assert "frame-ancestors 'self'" in page.headers["content-security-policy"]
    assert client.get("/mlsecrets/console/static/console.js").status_code == 200
    schema = client.get("/mlsecrets/v1/openapi.json")
    assert schema.headers["content-security-policy"].startswith("default-src 'none'")
    assert schema.headers["x-frame-options"] == "DENY"


def test_airflows_page_resolves_relative_plugin_urls_against_its_base_url() -> None:
    """What the relative nav entry relies on: Airflow's UI page sets ``<base href>`` to the
    path of ``[api] base_url``, and frames the entry's ``href`` as given."""
    import airflow

    page = (Path(airflow.__file__).parent / "ui" / "dist" / "index.html").read_text()
    assert '<base href="{{ backend_server_base_url }}"' in page


@pytest.mark.parametrize("prefix", ["", "/airflow", "/team/airflow"])
def test_the_console_works_under_the_base_urls_path_prefix(prefix: str) -> None:
    """Mounted as Airflow mounts it under ``[api] base_url = http://host{prefix}`` (its app's
    ``root_path``): the nav entry, its icons, the page's assets and the vault's routes its
    script calls (``../v1/`` from the page) all resolve under the prefix."""
    from fastapi import FastAPI

    from airflow_provider_mlsecrets.api.airflow_plugin import MLSecretsPlugin

    [spec], [view] = MLSecretsPlugin.fastapi_apps, MLSecretsPlugin.external_views
    parent = FastAPI(root_path=prefix)
    parent.mount(spec["url_prefix"], spec["app"])
    client = TestClient(parent, base_url="http://airflow.test")
    base = f"http://airflow.test{prefix}/"  # Airflow's <base href>, for the nav and its frame
    page_url = urljoin(base, view["href"])
    assert page_url == f"http://airflow.test{prefix}/mlsecrets/console/"
    page = client.get(page_url)
    assert page.status_code == 200 and "<title>Secrets" in page.text
    for icon in (view["icon"], view["icon_dark_mode"]):
        got = client.get(urljoin(base, icon))
        assert got.status_code == 200 and got.headers["content-type"].startswith("image/svg")
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert assets and all(not a.startswith("/") for a in assets), assets
    for asset in assets:
        assert client.get(urljoin(page_url, asset)).status_code == 200, asset
    script = (STATIC / "console.js").read_text()
    assert 'new URL("../v1/", window.location.href)' in script
    schema = client.get(urljoin(page_url, "../v1/openapi.json"))
    assert schema.status_code == 200 and "/v1/insight/inventory" in schema.json()["paths"]


Scope = MutableMapping[str, Any]


def _echo() -> Any:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        body = (headers.get(b"authorization", b"-") + b"|" +
                (b"bridged" if scope.get(BRIDGED) else b"plain"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
    return app


CONSOLE = {CONSOLE_HEADER: "1", "sec-fetch-site": "same-origin", "cookie": f"_token={JWT}"}


@pytest.mark.parametrize(("method", "path", "headers", "expected"), [
    ("GET", "/v1/insight/inventory", CONSOLE, f"Bearer {JWT}|bridged"),
    ("GET", "/v1/insight/secrets/a/b", CONSOLE, f"Bearer {JWT}|bridged"),
    ("POST", "/v1/review", CONSOLE, f"Bearer {JWT}|bridged"),
    # never a value, a write or a grant with the session
    ("POST", "/v1/read/connections/db", CONSOLE, "-|plain"),
    ("GET", "/v1/list", CONSOLE, "-|plain"),
    ("POST", "/v1/insight/inventory", CONSOLE, "-|plain"),
    ("GET", "/v1/review", CONSOLE, "-|plain"),
    # only the console's own same-origin script
    ("GET", "/v1/insight/inventory", {**CONSOLE, "sec-fetch-site": "cross-site"}, "-|plain"),
    ("GET", "/v1/insight/inventory", {**CONSOLE, "sec-fetch-site": "same-site"}, "-|plain"),
    ("GET", "/v1/insight/inventory", {k: v for k, v in CONSOLE.items()
                                      if k != "sec-fetch-site"}, "-|plain"),
    ("GET", "/v1/insight/inventory", {k: v for k, v in CONSOLE.items()
                                      if k != CONSOLE_HEADER}, "-|plain"),
    ("GET", "/v1/insight/inventory", {**CONSOLE, "cookie": "other=1"}, "-|plain"),
    # an explicit credential wins
    ("GET", "/v1/insight/inventory", {**CONSOLE, "authorization": "Bearer mls_x"},
     "Bearer mls_x|plain"),
])
def test_the_bridge_lends_the_session_only_to_the_consoles_read_only_calls(
        method: str, path: str, headers: dict[str, str], expected: str) -> None:
    transport = httpx.ASGITransport(app=ConsoleBridge(_echo()))

    async def ask() -> str:
        async with httpx.AsyncClient(transport=transport, base_url="http://airflow") as client:
            got = await client.request(method, path, headers=headers)
            return got.text

    assert asyncio.run(ask()) == expected


def test_the_bridge_reads_the_route_below_the_plugins_mount() -> None:
    """Airflow mounts the app at /mlsecrets: Starlette passes the full path with a root_path."""
    sent: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        sent.append(dict(scope))

    async def run() -> None:
        scope = {"type": "http", "method": "GET", "path": "/mlsecrets/v1/insight/keys",
                 "root_path": "/mlsecrets",
                 "headers": [(k.encode(), v.encode()) for k, v in CONSOLE.items()]}
        await ConsoleBridge(app)(scope, None, None)  # type: ignore[arg-type]

    asyncio.run(run())
    assert sent[0][BRIDGED] is True
