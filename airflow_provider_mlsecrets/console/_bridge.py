"""The console's front door, in front of the vault's app (outermost, so the vault's own
hardening headers, which forbid framing and scripts, never touch the page): ``/console/…``
goes to the page's app; the page's calls to the vault are authenticated by the user's Airflow
session.

Airflow 3.3's UI keeps its JWT in one place, the ``_token`` cookie (``COOKIE_NAME_JWT_TOKEN``),
never in local storage: the FAB and Keycloak auth managers and Airflow's
``JWTRefreshMiddleware`` set it ``HttpOnly`` and ``SameSite=Lax``; the simple auth manager's
login page sets it from its own script. The console's script never reads it: the browser sends
it with the page's same-origin requests, and this middleware, in front of the vault's app,
copies it into the ``Authorization: Bearer`` header that the vault's routes read, where the
existing Airflow verifier checks it like any other Airflow token, and the vault's roles decide.

It does so only for a request that
- asks for a read-only console route (``GET /v1/insight/…``) or the access review
  (``POST /v1/review``): a session cookie never reaches a secret's value or a write;
- carries :data:`CONSOLE_HEADER`, which no cross-site form or link can send, and which a
  cross-origin script could send only after a CORS pre-flight;
- says ``Sec-Fetch-Site: same-origin`` (every current browser sends it), so no other site's
  page can use a visitor's session, whatever CORS allows;
- carries no ``Authorization`` header of its own (an explicit credential always wins)."""

from __future__ import annotations

from starlette.requests import cookie_parser

from airflow_provider_mlsecrets.api.hardening import ASGIApp, Receive, Scope, Send
from airflow_provider_mlsecrets.console._app import CONSOLE_PATH

COOKIE = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN
CONSOLE_HEADER = "x-mlsecrets-console"
BRIDGED = "mlsecrets.console"  # set in the scope of a request authenticated by the session
ROUTES = (("GET", "/v1/insight/"), ("POST", "/v1/review"))


def _route(scope: Scope) -> str:
    """The path below the mount (``/v1/…``), however Starlette passes the mount's prefix."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root):]
    return path


def _eligible(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    route, method = _route(scope), scope.get("method", "")
    if not any(method == m and (route.startswith(p) if p.endswith("/") else route == p)
               for m, p in ROUTES):
        return False
    return (headers.get(CONSOLE_HEADER.encode()) == b"1"
            and headers.get(b"sec-fetch-site") == b"same-origin"
            and b"authorization" not in headers)


class ConsoleBridge:
    """Sends the page's requests to ``console`` (as a Starlette ``Mount`` would), turns the
    Airflow session cookie of an eligible console request into its bearer credential (see
    the module's docstring), and leaves every other request as it came."""

    def __init__(self, app: ASGIApp, console: ASGIApp | None = None) -> None:
        self.app, self.console = app, console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.console is not None:
            route = _route(scope)
            if route == CONSOLE_PATH or route.startswith(CONSOLE_PATH + "/"):
                root = scope.get("root_path", "")
                await self.console({**scope, "app_root_path": scope.get("app_root_path", root),
                                    "root_path": root + CONSOLE_PATH}, receive, send)
                return
        if scope["type"] == "http":
            raw = [(bytes(k).lower(), bytes(v)) for k, v in scope.get("headers", [])]
            headers = dict(raw)
            if _eligible(scope, headers):
                token = cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(COOKIE)
                if token:
                    scope = {**scope, BRIDGED: True, "headers": [
                        *raw, (b"authorization", b"Bearer " + token.encode("latin-1"))]}
        await self.app(scope, receive, send)
