"""The alert routes: thin, like the others. ``POST /v1/alerts/evaluate`` is what the
maintenance DAG calls (workers hold no vault); ``GET /v1/insight/alerts`` is what the
console reads. All need ``audit`` and are audited (service/alerts.py)."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from airflow_provider_mlsecrets.api.routes import Who
from airflow_provider_mlsecrets.plain import plain
from airflow_provider_mlsecrets.service import Vault
from airflow_provider_mlsecrets.service.alerts import MAX_LIST

Limit = Annotated[int, Query(ge=1, le=MAX_LIST)]


def build_alert_router(vault: Callable[[], Vault]) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["alerts"])

    @router.post("/alerts/evaluate")
    def evaluate(caller: Who) -> dict[str, Any]:
        """One pass: evaluate the rules over what was written since, deliver what is due."""
        return plain(vault().alerts.run(caller))  # type: ignore[no-any-return]

    @router.get("/alerts")
    def alerts(caller: Who, open: bool = False, limit: Limit = 100
               ) -> builtins.list[dict[str, Any]]:
        """Alerts, newest first (``open``: not acknowledged)."""
        return plain(vault().alerts.list(  # type: ignore[no-any-return]
            caller, open_only=open, limit=limit))

    @router.post("/alerts/{alert_id}/ack")
    def ack(alert_id: Annotated[int, Path(ge=1, le=2**31 - 1)], caller: Who
            ) -> dict[str, Any]:
        return plain(vault().alerts.ack(caller, alert_id))  # type: ignore[no-any-return]

    @router.post("/alerts/test")
    def test(caller: Who) -> dict[str, str]:
        """A test alert through every notifier; each one's result."""
        return vault().alerts.test(caller)

    @router.get("/insight/alerts", tags=["insight"])
    def open_alerts(caller: Who, limit: Limit = 100) -> builtins.list[dict[str, Any]]:
        """The open alerts, for the console."""
        return plain(vault().alerts.open(caller, limit=limit))  # type: ignore[no-any-return]

    return router
