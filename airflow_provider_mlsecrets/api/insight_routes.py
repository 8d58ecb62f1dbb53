"""The ``/v1/insight`` routes the security console reads, and ``/v1/review``: thin, like the
other routes. Every answer is metadata (never a value, never a token hash), every call one
audited ``insight.*`` operation; query parameters are validated and bounded here, so
nothing unbounded reaches the database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query

from airflow_provider_mlsecrets.api.routes import MAX_NAME, Who
from airflow_provider_mlsecrets.plain import plain
from airflow_provider_mlsecrets.service import Vault
from airflow_provider_mlsecrets.service.insight import MAX_LIMIT

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]


def build_insight_router(vault: Callable[[], Vault]) -> APIRouter:
    router = APIRouter(prefix="/v1/insight", tags=["insight"])

    @router.get("/inventory")
    def inventory(caller: Who, search: Annotated[str, Query(max_length=MAX_NAME)] = "",
                  team: Annotated[str | None, Query(max_length=64)] = None,
                  state: Annotated[str | None, Query(max_length=16)] = None,
                  offset: Offset = 0, limit: Limit = 50,
                  sort: Annotated[str, Query(max_length=8)] = "path",
                  deleted: bool = False) -> dict[str, Any]:
        """The secrets the caller may list, with owner, version, age, rotation and team."""
        return plain(vault().insight.inventory(  # type: ignore[no-any-return]
            caller, search=search, team=team, state=state, offset=offset, limit=limit,
            sort=sort, deleted=deleted))

    return router
