"""The ``/v1`` routes: thin, like the CLI. Each one resolves the caller, calls the vault (which
authenticates, authorises and audits) and shapes the answer. Values travel base64-encoded in
JSON bodies, never in a URL; reads are POSTs so no cache or proxy log keeps them."""

from __future__ import annotations

import base64
import binascii
import builtins
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from airflow_provider_mlsecrets.api.hardening import AUTHENTICATING
from airflow_provider_mlsecrets.audit.record import Outcome
from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.plain import plain
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.service.audit import AuditFilter

Authenticate = Callable[[Request], Awaitable[Caller]]
Announce = Callable[[str, int | None], str]  # a finished rotation -> what was announced
MAX_NAME = 256
MAX_VERSION = 2**31 - 1  # the store's integer columns (PostgreSQL's integer)


class _Strict(BaseModel):
    """Bodies: no unknown field; numbers and flags are JSON integers and booleans only
    (``true`` is no version, ``2.0`` or ``"2"`` no integer) and in range, so nothing out of
    range reaches the database and comes back as a 500."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ValueIn(_Strict):
    value_b64: str = Field(max_length=32 * 1024 * 1024)
    cas: int | None = Field(default=None, ge=0, le=MAX_VERSION)
    description: str | None = Field(default=None, max_length=4096)
    owner: str | None = Field(default=None, max_length=MAX_NAME)


class VersionIn(_Strict):
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)


class ReadIn(VersionIn):
    reason: str | None = Field(default=None, max_length=1000)  # kept in the audit record


class AccessRequestIn(_Strict):
    path: str = Field(max_length=MAX_NAME)
    reason: str = Field(max_length=1000)
    window: str = Field(default="15m", max_length=16)


class CriticalIn(_Strict):
    add: list[str] = Field(default_factory=list, max_length=64)
    remove: list[str] = Field(default_factory=list, max_length=64)


class DestroyIn(_Strict):
    version: int = Field(ge=1, le=MAX_VERSION)


class VerifyIn(_Strict):
    all_seals: bool = False


class RevokeIn(_Strict):
    principal: str = Field(max_length=MAX_NAME)
    pattern: str = Field(max_length=MAX_NAME)


class RotateIn(_Strict):
    only_if_due: bool = False  # do only what is due (the rotation DAG's mapped tasks)
    announce: bool = True  # emit the asset event here (the DAG emits its own)


class KeyRotateIn(_Strict):
    resume: bool = False
    keep_retired: bool = False


class UnsealIn(_Strict):
    token: str = Field(max_length=64 * 1024 * 1024)


class PrincipalIn(_Strict):
    name: str = Field(max_length=MAX_NAME)
    role: str = Field(max_length=64)
    # an ISO 8601 string with its offset (strict mode would take only datetime objects,
    # which JSON has not); a naive time could not be compared with the vault's UTC clock
    expires_at: AwareDatetime | None = Field(default=None, strict=False)

    @field_validator("expires_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        try:
            return None if value is None else value.astimezone(timezone.utc)
        except OverflowError:
            raise ValueError("out of range") from None


class GrantIn(_Strict):
    principal: str = Field(max_length=MAX_NAME)
    pattern: str = Field(max_length=MAX_NAME)
    capabilities: list[str] = Field(min_length=1, max_length=16)
    deny: bool = False


class ValueOut(BaseModel):
    path: str
    version: int | None
    value_b64: str


def decode_value(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("value_b64 is not valid base64") from None


async def current_caller(request: Request) -> Caller:
    """The caller, as the app's authenticator (``app.state.authenticate``) sees it. Marks
    the request as one whose success proves its credential (the hardening then remembers
    the credential as good); a route without this dependency proves nothing."""
    request.scope[AUTHENTICATING] = True
    authenticate: Authenticate = request.app.state.authenticate
    return await authenticate(request)


Who = Annotated[Caller, Depends(current_caller)]


def build_router(vault: Callable[[], Vault], announce: Announce | None = None) -> APIRouter:
    """The routes. ``announce`` emits a rotation's asset event where Airflow's metadata
    database is at hand (the API server's plugin); without it a rotation says it emitted
    none."""
    router = APIRouter(prefix="/v1")

    # -- the vault ---------------------------------------------------------------------
    @router.get("/status", tags=["vault"])
    def status(caller: Who) -> dict[str, Any]:
        return plain(vault().status(caller))  # type: ignore[no-any-return]

    # -- secrets -----------------------------------------------------------------------
    @router.post("/read/{path:path}", tags=["secrets"])
    def read(path: str, body: ReadIn, caller: Who) -> ValueOut:
        """Plaintext back to a person (``read``: security engineers only), with the
        ``reason`` its audit record keeps; a critical path needs an open approval."""
        value = vault().secrets.read(caller, path, body.version, reason=body.reason)
        return ValueOut(path=path, version=body.version,
                        value_b64=base64.b64encode(value).decode())

    @router.post("/inject/{path:path}", tags=["secrets"])
    def inject(path: str, body: VersionIn, caller: Who) -> ValueOut:
        """Plaintext into a task (``inject``)."""
        value = vault().secrets.inject(caller, path, body.version)
        return ValueOut(path=path, version=body.version,
                        value_b64=base64.b64encode(value).decode())

    @router.post("/unseal/{path:path}", tags=["secrets"])
    def unseal(path: str, body: UnsealIn, caller: Who) -> ValueOut:
        value = vault().secrets.unseal(caller, path, body.token)
        return ValueOut(path=path, version=None, value_b64=base64.b64encode(value).decode())

    @router.put("/secrets/{path:path}", tags=["secrets"])
    def write(path: str, body: ValueIn, caller: Who) -> dict[str, Any]:
        info = vault().secrets.put(caller, path, decode_value(body.value_b64), cas=body.cas,
                                   description=body.description, owner=body.owner)
        return plain(info)  # type: ignore[no-any-return]

    @router.delete("/secrets/{path:path}", tags=["secrets"])
    def delete(path: str, caller: Who) -> dict[str, str]:
        vault().secrets.delete(caller, path)
        return {"path": path, "deleted": "yes"}

    @router.post("/undelete/{path:path}", tags=["secrets"])
    def undelete(path: str, caller: Who) -> dict[str, str]:
        vault().secrets.undelete(caller, path)
        return {"path": path, "deleted": "no"}

    @router.post("/destroy/{path:path}", tags=["secrets"])
    def destroy(path: str, body: DestroyIn, caller: Who) -> dict[str, Any]:
        vault().secrets.destroy(caller, path, body.version)
        return {"path": path, "destroyed": body.version}

    @router.get("/list", tags=["secrets"])
    def list_(caller: Who, prefix: Annotated[str, Query(max_length=MAX_NAME)] = "",
              deleted: bool = False) -> builtins.list[dict[str, Any]]:
        return plain(vault().secrets.list(caller, prefix, include_deleted=deleted))  # type: ignore[no-any-return]

    @router.get("/versions/{path:path}", tags=["secrets"])
    def versions(path: str, caller: Who) -> builtins.list[dict[str, Any]]:
        return plain(vault().secrets.versions(caller, path))  # type: ignore[no-any-return]

    # -- principals and grants -----------------------------------------------------------
    @router.get("/principals", tags=["access"])
    def principals(caller: Who) -> builtins.list[dict[str, Any]]:
        return plain(vault().access.list_principals(caller))  # type: ignore[no-any-return]

    @router.post("/principals", tags=["access"])
    def create_principal(body: PrincipalIn, caller: Who) -> dict[str, str]:
        token = vault().access.create_principal(caller, body.name, body.role, body.expires_at)
        return {"name": body.name, "role": body.role, "token": token}

    @router.post("/principals/{name}/revoke", tags=["access"])
    def revoke_principal(name: str, caller: Who) -> dict[str, str]:
        vault().access.revoke_principal(caller, name)
        return {"name": name, "revoked": "yes"}

    @router.post("/grants", tags=["access"])
    def grant(body: GrantIn, caller: Who) -> dict[str, Any]:
        return plain(vault().access.grant(  # type: ignore[no-any-return]
            caller, body.principal, body.pattern, body.capabilities, deny=body.deny))

    @router.post("/grants/revoke", tags=["access"])
    def revoke_grant(body: RevokeIn, caller: Who) -> dict[str, Any]:
        removed = vault().access.revoke_grant(caller, body.principal, body.pattern)
        return {"principal": body.principal, "pattern": body.pattern, "removed": removed}

    @router.get("/policy", tags=["access"])
    def policy(caller: Who, principal: Annotated[str | None, Query(max_length=MAX_NAME)] = None
               ) -> builtins.list[dict[str, Any]]:
        return plain(vault().access.policy(caller, principal))  # type: ignore[no-any-return]

    # -- break-glass reads ----------------------------------------------------------------
    @router.get("/policy/critical", tags=["break-glass"])
    def critical(caller: Who) -> builtins.list[str]:
        return vault().break_glass.critical(caller)

    @router.post("/policy/critical", tags=["break-glass"])
    def set_critical(body: CriticalIn, caller: Who) -> builtins.list[str]:
        return vault().break_glass.set_critical(caller, add=tuple(body.add),
                                                remove=tuple(body.remove))

    @router.get("/access/requests", tags=["break-glass"])
    def access_requests(caller: Who, open_only: bool = False
                        ) -> builtins.list[dict[str, Any]]:
        return plain(vault().break_glass.requests(  # type: ignore[no-any-return]
            caller, open_only=open_only))

    @router.post("/access/requests", tags=["break-glass"])
    def access_request(body: AccessRequestIn, caller: Who) -> dict[str, Any]:
        return plain(vault().break_glass.request(  # type: ignore[no-any-return]
            caller, body.path, body.reason, body.window))

    @router.post("/access/requests/{request_id}/approve", tags=["break-glass"])
    def access_approve(request_id: str, caller: Who) -> dict[str, Any]:
        return plain(vault().break_glass.approve(caller, request_id))  # type: ignore[no-any-return]

    @router.post("/access/requests/{request_id}/deny", tags=["break-glass"])
    def access_deny(request_id: str, caller: Who) -> dict[str, Any]:
        return plain(vault().break_glass.deny(caller, request_id))  # type: ignore[no-any-return]

    # -- audit -------------------------------------------------------------------------
    @router.get("/audit", tags=["audit"])
    def audit_tail(caller: Who, n: Annotated[int, Query(ge=1, le=10_000)] = 20,
                   principal: Annotated[str | None, Query(max_length=MAX_NAME)] = None,
                   action: Annotated[str | None, Query(max_length=64)] = None,
                   outcome: Outcome | None = None) -> builtins.list[dict[str, Any]]:
        filters = AuditFilter(principal=principal, action=action,
                              outcome=outcome.value if outcome else None)
        return plain(vault().audit.tail(caller, n, filters))  # type: ignore[no-any-return]

    @router.get("/audit/count", tags=["audit"])
    def audit_count(caller: Who) -> dict[str, int]:
        return {"records": vault().audit.count(caller)}

    @router.post("/audit/verify", tags=["audit"])
    def audit_verify(body: VerifyIn, caller: Who) -> dict[str, Any]:
        """The whole trail checked; a broken chain is a 409 naming the first bad record."""
        report = vault().audit.verify(caller, all_seals=body.all_seals)
        return {"ok": report.ok, "records": report.records, "chains": report.chains,
                "seals_checked": report.seals_checked, "problems": report.problems}

    @router.post("/audit/checkpoint", tags=["audit"])
    def audit_checkpoint(caller: Who) -> dict[str, Any]:
        """Verify, then the newest sealed record of each chain: keep it away from the
        database, to detect truncation later."""
        point: dict[str, Any] = json.loads(vault().audit.checkpoint(caller).to_json())
        return point

    # -- rotation and keys ---------------------------------------------------------------
    @router.get("/rotation", tags=["rotation"])
    def rotation_status(caller: Who) -> builtins.list[dict[str, Any]]:
        return plain(vault().rotation.status(caller))  # type: ignore[no-any-return]

    @router.get("/rotation/due", tags=["rotation"])
    def rotation_due(caller: Who) -> builtins.list[str]:
        """Paths whose rotation, resumption or invalidation is due, among those the caller
        may rotate."""
        return vault().rotation.due(caller)

    @router.post("/rotate/{path:path}", tags=["rotation"])
    def rotate(path: str, caller: Who, body: RotateIn | None = None) -> dict[str, Any]:
        """Run (or resume) a rotation; with ``only_if_due``, only what is due. A finished
        rotation emits its asset event here unless ``announce`` is false."""
        body = body or RotateIn()
        result = vault().rotation.rotate(caller, path, only_if_due=body.only_if_due)
        out: dict[str, Any] = plain(result)
        if body.announce and result.result == "rotated":
            out["asset_event"] = (announce(result.path, result.version) if announce else
                                  "no asset event: this vault service is not Airflow's API "
                                  "server, which has Airflow's metadata database")
        return out

    @router.post("/rotation/retain", tags=["rotation"])
    def rotation_retain(caller: Who) -> dict[str, Any]:
        """Destroy retired versions older than their policy's retention."""
        return {"destroyed": vault().rotation.retain(caller)}

    @router.get("/keys", tags=["keys"])
    def keys(caller: Who) -> builtins.list[dict[str, Any]]:
        return plain(vault().key_list(caller))  # type: ignore[no-any-return]

    @router.post("/keys/rotate", tags=["keys"])
    def rotate_key(body: KeyRotateIn, caller: Who) -> dict[str, Any]:
        """A new key-encryption key, every data key re-wrapped under it (no payload is
        decrypted), then retired keys nothing uses disabled (unless ``keep_retired``)."""
        report = vault().keys.rotate(caller, new_version=not body.resume,
                                     disable=not body.keep_retired)
        return plain(report)  # type: ignore[no-any-return]

    return router
