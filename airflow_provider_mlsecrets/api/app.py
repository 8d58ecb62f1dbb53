"""The HTTP application: ``/v1`` routes behind the hardening middleware, with a published
OpenAPI schema at ``/v1/openapi.json``."""

from __future__ import annotations

import atexit
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from airflow_provider_mlsecrets.alerts.runner import AlertRunner
from airflow_provider_mlsecrets.api import errors
from airflow_provider_mlsecrets.api.address import Network, networks
from airflow_provider_mlsecrets.api.alert_routes import build_alert_router
from airflow_provider_mlsecrets.api.auth import Verifier, authenticator
from airflow_provider_mlsecrets.api.flood import FloodGuard, Summary, write_summary
from airflow_provider_mlsecrets.api.hardening import Hardening, RateLimiter
from airflow_provider_mlsecrets.api.insight_routes import build_insight_router
from airflow_provider_mlsecrets.api.routes import Announce, build_router
from airflow_provider_mlsecrets.errors import MLSecretsError
from airflow_provider_mlsecrets.service import Vault
from airflow_provider_mlsecrets.settings import Settings

API_VERSION = "1"
MAX_BODY = 1024 * 1024  # a 64 KiB value is 88 KiB in base64; raise with --max-body
MAX_FAILED_AUTH = 20.0  # failed authentications per second recorded one by one
FAILED_AUTH_WINDOW = 60.0  # seconds summarised by one record past that


def create_app(settings: Callable[[], Settings] = Settings.load, *,
               verifiers: tuple[Verifier, ...] = (), rate: float = 50.0, burst: int = 100,
               max_body: int = MAX_BODY, tls: bool = False,
               max_failed_auth: float = MAX_FAILED_AUTH,
               failed_auth_window: float = FAILED_AUTH_WINDOW,
               announce: Announce | None = None) -> FastAPI:
    """The service. ``settings`` is called once, at the first request, so building the app
    (as Airflow does when it loads plugins) touches neither the HSM nor the database.
    ``announce`` emits the asset event of a rotation made through the service."""
    lock = threading.Lock()
    holder: list[Vault] = []
    proxies: list[tuple[Network, ...]] = []

    def vault() -> Vault:
        with lock:
            if not holder:
                holder.append(Vault(settings()))
            return holder[0]

    def trusted() -> tuple[Network, ...]:
        """The trusted proxies; none while the settings cannot load (the route then fails
        with the reason), so a broken configuration believes no forwarded header."""
        if not proxies:
            try:
                proxies.append(networks(vault().settings.trusted_proxies))
            except MLSecretsError:
                return ()
        return proxies[0]

    def summarise(summary: Summary, ceiling: float) -> None:
        write_summary(vault().core, summary, ceiling)

    flood = FloodGuard(max_failed_auth, failed_auth_window, summarise)
    # the alert evaluator of the process that serves this app; started only where the
    # vault is served (mlsecrets serve, the API server's plugin), never at import
    runner = AlertRunner(vault)
    atexit.register(flood.flush)  # a server stopped without its lifespan (a plugin)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        flood.flush()  # what the last window counted, before the server exits
        runner.stop(timeout=2.0)

    app = FastAPI(title="mlsecrets", version=API_VERSION, openapi_url="/v1/openapi.json",
                  docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="HSM-backed secrets for Airflow pipelines: every call is "
                              "authenticated, authorised and audited.")
    errors.install(app)
    app.state.authenticate = authenticator(*verifiers, vault=vault, flood=flood)
    app.state.flood = flood
    app.state.alerts = runner
    app.include_router(build_router(vault, announce))
    app.include_router(build_insight_router(vault))
    app.include_router(build_alert_router(vault))
    app.add_middleware(Hardening, max_body=max_body, limiter=RateLimiter(rate, burst),
                       tls=tls, trusted=trusted, flood=flood)
    return app
