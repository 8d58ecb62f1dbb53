"""The console page's own small app: the HTML shell and its static files, with headers that
keep anything it shows out of caches and allow scripts, styles and requests from this origin
only (no inline script, no CDN: the charting library is a vendored file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from airflow_provider_mlsecrets.api.hardening import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).with_name("static")
CONSOLE_PATH = "/console"  # under the plugin's /mlsecrets
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; frame-ancestors 'self'; base-uri 'none'; "
       "form-action 'none'; object-src 'none'")
HEADERS = [
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"SAMEORIGIN"),  # Airflow shows the page in its own frame
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", CSP.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class _Headers:
    """Sets :data:`HEADERS` on every answer, replacing any of the same name."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        names = {name for name, _ in HEADERS}

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*(h for h in message.get("headers", [])
                                        if bytes(h[0]).lower() not in names), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_console_app() -> FastAPI:
    """The page at ``/`` and its assets at ``/static``; nothing here reads the vault."""
    app = FastAPI(title="mlsecrets console", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_Headers)
    return app


def external_view(url_prefix: str) -> dict[str, Any]:
    """The plugin's nav entry: a top-level "Secrets" item in Airflow's navigation, which
    shows ``href`` in a same-origin frame at ``/plugin/secrets``.

    ``href`` and the icons are relative (no leading slash): Airflow's UI page carries
    ``<base href>`` = the path of ``[api] base_url``, under which it mounts the plugin's app,
    so they resolve to ``/mlsecrets/console/`` or, with ``base_url = http://host/airflow``,
    ``/airflow/mlsecrets/console/``. (An absolute ``/mlsecrets/…`` would miss the prefix.)
    The page's own URLs are relative to it too (``static/…``, and ``../v1/`` in its script)."""
    base = f"{url_prefix.strip('/')}{CONSOLE_PATH}"
    return {"name": "Secrets", "href": f"{base}/", "url_route": "secrets",
            "destination": "nav", "nav_top_level": True,
            "icon": f"{base}/static/icon.svg", "icon_dark_mode": f"{base}/static/icon-dark.svg"}
