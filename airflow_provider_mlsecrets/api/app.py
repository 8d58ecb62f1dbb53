"""The HTTP application: ``/v1`` routes behind the hardening middleware, with a published
OpenAPI schema at ``/v1/openapi.json``."""

from __future__ import annotations

import threading
from collections.abc import Callable

from fastapi import FastAPI

from airflow_provider_mlsecrets.api import errors
from airflow_provider_mlsecrets.api.auth import Verifier, authenticator
from airflow_provider_mlsecrets.api.hardening import Hardening, RateLimiter
from airflow_provider_mlsecrets.api.routes import build_router
from airflow_provider_mlsecrets.service import Vault
from airflow_provider_mlsecrets.settings import Settings

API_VERSION = "1"
MAX_BODY = 1024 * 1024  # a 64 KiB value is 88 KiB in base64; raise with --max-body


def create_app(settings: Callable[[], Settings] = Settings.load, *,
               verifiers: tuple[Verifier, ...] = (), rate: float = 50.0, burst: int = 100,
               max_body: int = MAX_BODY, tls: bool = False) -> FastAPI:
    """The service. ``settings`` is called once, at the first request, so building the app
    (as Airflow does when it loads plugins) touches neither the HSM nor the database."""
    lock = threading.Lock()
    holder: list[Vault] = []

    def vault() -> Vault:
        with lock:
            if not holder:
                holder.append(Vault(settings()))
            return holder[0]

    app = FastAPI(title="mlsecrets", version=API_VERSION, openapi_url="/v1/openapi.json",
                  docs_url=None, redoc_url=None,
                  description="HSM-backed secrets for Airflow pipelines: every call is "
                              "authenticated, authorised and audited.")
    errors.install(app)
    app.state.authenticate = authenticator(*verifiers)
    app.include_router(build_router(vault))
    app.add_middleware(Hardening, max_body=max_body,
                       limiter=RateLimiter(rate, burst), tls=tls)
    return app
