"""Our exceptions as HTTP answers. Messages are our own (they name paths and principals,
never values). Anything else is a 500 that says nothing about itself, answered by the
hardening middleware (:mod:`.hardening`): an ``Exception`` handler here would run in
Starlette's outermost middleware, which re-raises, so the server would log the traceback."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from airflow_provider_mlsecrets import errors

# most specific first
STATUS: tuple[tuple[type[errors.MLSecretsError], int], ...] = (
    (errors.VersionConflict, 409),
    (errors.RotationBusy, 409),
    (errors.RotationFailed, 502),  # the service the rotator talks to failed
    (errors.InvalidInput, 400),
    (errors.Unauthenticated, 401),
    (errors.AccessDenied, 403),
    (errors.NotFound, 404),
    (errors.IntegrityError, 409),
    (errors.StoreError, 503),
    (errors.KeyProviderError, 503),
    (errors.ConfigurationError, 503),
)


def status_for(exc: errors.MLSecretsError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def body(kind: str, message: str, exit_code: int) -> dict[str, object]:
    return {"error": kind, "message": message, "exit_code": exit_code}


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.MLSecretsError)
    async def _ours(request: Request, exc: errors.MLSecretsError) -> JSONResponse:
        return JSONResponse(body(type(exc).__name__, str(exc), exc.exit_code),
                            status_code=status_for(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own message echoes the input (a value, perhaps): name the fields only
        where = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return JSONResponse(body("InvalidInput", "invalid request: " + ", ".join(where), 2),
                            status_code=400)
