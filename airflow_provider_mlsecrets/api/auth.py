"""Who is calling: a principal's bearer token (``mls_…``), checked by the vault in constant
time, or an identity that a trusted verifier in this process has checked (an Airflow user's
token when the service runs inside the Airflow API server).

What a client says about itself (its DAG, task, host, and a forwarded address that came
through no trusted proxy) is recorded as ``claimed_*`` context only: the audit trail never
mistakes a claim for a verified identity.

Past the global ceiling of failed authentications (:mod:`.flood`), a caller whose credential
is not known good is checked here first, without a record; a failure is then answered 401
and counted in the window's summary instead of being recorded on its own."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from airflow_provider_mlsecrets.api.flood import FloodGuard
from airflow_provider_mlsecrets.api.hardening import (
    ABSORBED,
    KNOWN_GOOD,
    RESERVED,
    bearer_credential,
    request_origin,
)
from airflow_provider_mlsecrets.audit.record import ContextValue
from airflow_provider_mlsecrets.errors import Unauthenticated
from airflow_provider_mlsecrets.service import Caller, Vault

CONTEXT_HEADER = "x-mlsecrets-context"
CLAIMABLE = ("dag_id", "task_id", "run_id", "try_number", "map_index", "host", "pid",
             "component")
MAX_CLAIM = 256

# a verifier maps a bearer credential that is not a principal token to the principal names
# it may act as (most specific first), or None if it cannot verify it
Verifier = Callable[[str], Awaitable[tuple[str, ...] | None]]


def request_context(request: Request) -> dict[str, ContextValue]:
    context: dict[str, ContextValue] = {"component": "http",
                                        **request_origin(request.scope).context()}
    raw = request.headers.get(CONTEXT_HEADER, "")
    if raw and len(raw) <= 4096:
        try:
            claims = json.loads(raw)
        except ValueError:
            claims = {}
        if isinstance(claims, dict):
            for key in CLAIMABLE:
                value = claims.get(key)
                if isinstance(value, str | int) and not isinstance(value, bool):
                    context[f"claimed_{key}"] = str(value)[:MAX_CLAIM]
    return context


def bearer(request: Request) -> str | None:
    return bearer_credential(request.scope)


def authenticator(*verifiers: Verifier, vault: Callable[[], Vault] | None = None,
                  flood: FloodGuard | None = None) -> Callable[[Request], Awaitable[Caller]]:
    """The FastAPI dependency that turns a request into a :class:`Caller` (with ``vault``
    and ``flood``: refusing it past the failure ceiling if it does not authenticate)."""

    async def identify(request: Request) -> Caller:
        context = request_context(request)
        credential = bearer(request)
        if credential is not None and not credential.startswith("mls_"):
            for verify in verifiers:
                names = await verify(credential)
                if names:
                    return Caller(None, {**context, "verified_by": "airflow"}, verified=names)
        return Caller(credential, context)

    async def authenticate(request: Request) -> Caller:
        caller = await identify(request)
        if vault is None or flood is None or request.scope.get(KNOWN_GOOD):
            return caller
        if flood.take():  # a failure may still be recorded on its own
            request.scope[RESERVED] = True
            return caller
        reason = await run_in_threadpool(vault().core.authentication_failure, caller)
        if reason is not None:
            flood.absorb(request_origin(request.scope).client)
            request.scope[ABSORBED] = True
            raise Unauthenticated(f"access denied: {reason}")
        return caller

    return authenticate
