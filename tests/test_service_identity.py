"""The identity checks that sit between Airflow and the vault, run through their real code
(an ASGI middleware called as the API server calls it, a hook reading a real connection):
an unverifiable task request fails closed, and a connection cannot redirect the vault."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from airflow_provider_mlsecrets.api.airflow_plugin import (
    TaskIdentityMiddleware,
    in_execution_request,
    task_identity,
)
from airflow_provider_mlsecrets.errors import AccessDenied
from airflow_provider_mlsecrets.hooks.vault import MLSecretsHook
from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend
from tests.conftest import Env


def through_middleware(path: str, authorization: bytes | None) -> dict[str, Any]:
    """Call the middleware with a request and report what the app behind it saw."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["execution"] = in_execution_request()
        try:
            seen["identity"] = task_identity()
        except AccessDenied as exc:
            seen["identity"] = f"refused: {exc}"
        seen["variable"] = MLSecretsBackend().path_for("variable", "mlsecrets:ml/key")

    headers = [(b"authorization", authorization)] if authorization else []
    scope = {"type": "http", "path": path, "headers": headers}
    asyncio.run(TaskIdentityMiddleware(app)(scope, None, None))  # type: ignore[arg-type]
    seen["after"] = in_execution_request()
    return seen


@pytest.mark.parametrize("path", ["/execution/variables/mlsecrets:ml/key",
                                  "/airflow/execution/variables/mlsecrets:ml/key"])
@pytest.mark.parametrize("authorization", [None, b"Bearer not-a-jwt", b"Bearer a.b.c"])
def test_an_execution_request_without_a_verified_task_fails_closed(
        path: str, authorization: bytes | None) -> None:
    seen = through_middleware(path, authorization)
    assert seen["execution"] is True and seen["after"] is False
    assert str(seen["identity"]).startswith("refused: access denied")
    assert seen["variable"] == "ml/key"  # served only as the (unverifiable) task: refused


def test_other_requests_carry_no_task_identity() -> None:
    seen = through_middleware("/api/v2/connections/test", b"Bearer a.b.c")
    assert seen["execution"] is False and seen["variable"] is None


def test_a_connection_cannot_point_the_vault_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "mlsecrets", "extra": {
        "url": "https://attacker.example", "token_file": "/etc/hostname",
        "pkcs11_module": "/tmp/evil.so"}}
    monkeypatch.setenv("AIRFLOW_CONN_MLSECRETS_DEFAULT", json.dumps(conn))
    ok, message = MLSecretsHook().test_connection()
    assert not ok and "may only set token_file" in message
    assert "pkcs11_module" in message and "url" in message


def test_a_verified_identity_with_no_principal_falls_through_only_where_the_vault_is_silent(
        env: Env) -> None:
    from airflow_provider_mlsecrets.errors import NotFound
    from airflow_provider_mlsecrets.service import Caller

    env.vault.secrets.put(env.admin, "connections/held", b"postgres://u:held-pw@h/db")
    unbound = Caller(None, {"component": "test"}, verified=("dag:no_principal",))
    with pytest.raises(NotFound):  # nothing there: Airflow may look in its metastore
        env.vault.secrets.inject(unbound, "connections/elsewhere")
    with pytest.raises(AccessDenied):  # the vault holds it: no other source may serve it
        env.vault.secrets.inject(unbound, "connections/held")
    records = {(r.principal, r.path, r.outcome) for r in env.vault.audit.tail(env.admin, 5)}
    assert {("dag:no_principal", "connections/elsewhere", "not_found"),
            ("dag:no_principal", "connections/held", "denied")} <= records
