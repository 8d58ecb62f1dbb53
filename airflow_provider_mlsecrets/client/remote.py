"""The vault over HTTP: the same calls as :class:`~..service.Vault`, made to the service at
``MLSECRETS_URL`` with the caller's token. Errors come back as the same exceptions, with the
service's message (which never holds a value)."""

from __future__ import annotations

import base64
import builtins
import json
import typing
from dataclasses import fields, is_dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from airflow_provider_mlsecrets import errors
from airflow_provider_mlsecrets.audit.checkpoint import Checkpoint
from airflow_provider_mlsecrets.audit.verify import Progress, Report
from airflow_provider_mlsecrets.paths import parse_path
from airflow_provider_mlsecrets.service import Caller
from airflow_provider_mlsecrets.service.access import GrantInfo, PrincipalInfo
from airflow_provider_mlsecrets.service.alerts import AlertView, PassResult
from airflow_provider_mlsecrets.service.audit import AuditFilter, AuditView
from airflow_provider_mlsecrets.service.break_glass import DEFAULT_WINDOW, AccessRequestInfo
from airflow_provider_mlsecrets.service.keys import RotationReport
from airflow_provider_mlsecrets.service.rotation import RotationResult, RotationStatus
from airflow_provider_mlsecrets.service.secrets import SecretInfo, VersionInfo
from airflow_provider_mlsecrets.service.vault import KeyView
from airflow_provider_mlsecrets.settings import Settings

T = TypeVar("T")
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class ServiceUnavailable(errors.MLSecretsError):
    """The HTTP service could not be reached or answered nonsense."""


def _build(cls: type[T], data: Any) -> T:
    """A dataclass from its JSON form (datetimes parsed back)."""
    if not is_dataclass(cls) or not isinstance(data, dict):
        raise ServiceUnavailable(f"the service answered an unexpected {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        value = data.get(f.name)
        if isinstance(value, str) and "datetime" in str(hints[f.name]):
            value = datetime.fromisoformat(value)
        if isinstance(value, list) and "tuple" in str(hints[f.name]):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def _error(response: httpx.Response) -> errors.MLSecretsError:
    try:
        payload = response.json()
        kind, message = str(payload["error"]), str(payload["message"])
    except (ValueError, KeyError, TypeError):
        return ServiceUnavailable(f"the service answered HTTP {response.status_code}")
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.MLSecretsError)) \
            or cls is errors.AuditChainBroken:
        cls = errors.IntegrityError if kind == "AuditChainBroken" else errors.MLSecretsError
    return cls(message)


class _Http:
    def __init__(self, settings: Settings) -> None:
        if settings.url is None:
            raise errors.ConfigurationError("MLSECRETS_URL is not set")
        self.base = settings.url.rstrip("/")
        verify: Any = str(settings.ca_file) if settings.ca_file else True
        self.client = httpx.Client(timeout=TIMEOUT, verify=verify, follow_redirects=False,
                                   trust_env=not _loopback_url(self.base))

    def call(self, caller: Caller, method: str, route: str, *, body: Any = None,
             params: dict[str, Any] | None = None) -> Any:
        headers = {"x-mlsecrets-context": json.dumps(
            {k: v for k, v in caller.context.items() if isinstance(v, str | int)})}
        if caller.token:
            headers["authorization"] = f"Bearer {caller.token}"
        try:
            response = self.client.request(method, f"{self.base}/v1/{route}", json=body,
                                            params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"cannot reach the vault service at {self.base} ({type(exc).__name__}); "
                "check MLSECRETS_URL and that 'mlsecrets serve' (or the Airflow API server) "
                "is up") from None
        if response.status_code >= 400:
            raise _error(response)
        return response.json()


def _loopback_url(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("127.0.0.1", "::1", "localhost")


def _value(payload: Any) -> bytes:
    return base64.b64decode(payload["value_b64"])


def _path(path: str) -> str:
    return quote(parse_path(path), safe="/")


class _Unsupported:
    """Operations the HTTP API does not offer: a clear error, not an AttributeError."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise errors.ConfigurationError(
                f"'{name}' is not available through MLSECRETS_URL; run it where the vault "
                "service runs (with the HSM and the database), without MLSECRETS_URL")

        return refuse


class RemoteSecrets(_Unsupported):
    def __init__(self, http: _Http) -> None:
        self._http = http

    def read(self, caller: Caller, path: str, version: int | None = None, *,
             reason: str | None = None) -> bytes:
        return _value(self._http.call(caller, "POST", f"read/{_path(path)}",
                                      body={"version": version, "reason": reason}))

    def inject(self, caller: Caller, path: str, version: int | None = None) -> bytes:
        return _value(self._http.call(caller, "POST", f"inject/{_path(path)}",
                                      body={"version": version}))

    def unseal(self, caller: Caller, path: str, token: str) -> bytes:
        return _value(self._http.call(caller, "POST", f"unseal/{_path(path)}",
                                      body={"token": token}))

    def put(self, caller: Caller, path: str, value: bytes, *, cas: int | None = None,
            description: str | None = None, owner: str | None = None) -> VersionInfo:
        return _build(VersionInfo, self._http.call(
            caller, "PUT", f"secrets/{_path(path)}",
            body={"value_b64": base64.b64encode(value).decode(), "cas": cas,
                  "description": description, "owner": owner}))

    def delete(self, caller: Caller, path: str) -> None:
        self._http.call(caller, "DELETE", f"secrets/{_path(path)}")

    def undelete(self, caller: Caller, path: str) -> None:
        self._http.call(caller, "POST", f"undelete/{_path(path)}")

    def destroy(self, caller: Caller, path: str, version: int) -> None:
        self._http.call(caller, "POST", f"destroy/{_path(path)}", body={"version": version})

    def list(self, caller: Caller, prefix: str = "", *,
             include_deleted: bool = False) -> builtins.list[SecretInfo]:
        rows = self._http.call(caller, "GET", "list",
                               params={"prefix": prefix, "deleted": include_deleted})
        return [_build(SecretInfo, r) for r in rows]

    def versions(self, caller: Caller, path: str) -> builtins.list[VersionInfo]:
        return [_build(VersionInfo, r)
                for r in self._http.call(caller, "GET", f"versions/{_path(path)}")]


class RemoteAccess(_Unsupported):
    def __init__(self, http: _Http) -> None:
        self._http = http

    def create_principal(self, caller: Caller, name: str, role: str,
                         expires_at: datetime | None = None) -> str:
        return str(self._http.call(caller, "POST", "principals", body={
            "name": name, "role": role,
            "expires_at": expires_at.isoformat() if expires_at else None})["token"])

    def list_principals(self, caller: Caller) -> builtins.list[PrincipalInfo]:
        return [_build(PrincipalInfo, r) for r in self._http.call(caller, "GET", "principals")]

    def revoke_principal(self, caller: Caller, name: str) -> None:
        self._http.call(caller, "POST", f"principals/{quote(name, safe='')}/revoke")

    def grant(self, caller: Caller, name: str, pattern: str, capabilities: builtins.list[str],
              *, deny: bool = False) -> GrantInfo:
        return _build(GrantInfo, self._http.call(caller, "POST", "grants", body={
            "principal": name, "pattern": pattern, "capabilities": capabilities,
            "deny": deny}))


    def revoke_grant(self, caller: Caller, name: str, pattern: str) -> int:
        return int(self._http.call(caller, "POST", "grants/revoke",
                                   body={"principal": name, "pattern": pattern})["removed"])

    def policy(self, caller: Caller, name: str | None = None) -> builtins.list[GrantInfo]:
        params = {} if name is None else {"principal": name}
        return [_build(GrantInfo, r) for r in self._http.call(caller, "GET", "policy",
                                                               params=params)]


class RemoteBreakGlass(_Unsupported):
    def __init__(self, http: _Http) -> None:
        self._http = http

    def critical(self, caller: Caller) -> builtins.list[str]:
        return [str(p) for p in self._http.call(caller, "GET", "policy/critical")]

    def set_critical(self, caller: Caller, *, add: tuple[str, ...] = (),
                     remove: tuple[str, ...] = ()) -> builtins.list[str]:
        return [str(p) for p in self._http.call(caller, "POST", "policy/critical", body={
            "add": list(add), "remove": list(remove)})]

    def request(self, caller: Caller, path: str, reason: str,
                window: str = DEFAULT_WINDOW) -> AccessRequestInfo:
        return _build(AccessRequestInfo, self._http.call(caller, "POST", "access/requests", body={
            "path": path, "reason": reason, "window": window}))

    def approve(self, caller: Caller, request_id: str) -> AccessRequestInfo:
        return _build(AccessRequestInfo, self._http.call(
            caller, "POST", f"access/requests/{quote(request_id, safe='')}/approve"))

    def deny(self, caller: Caller, request_id: str) -> AccessRequestInfo:
        return _build(AccessRequestInfo, self._http.call(
            caller, "POST", f"access/requests/{quote(request_id, safe='')}/deny"))

    def requests(self, caller: Caller, *, open_only: bool = False
                 ) -> builtins.list[AccessRequestInfo]:
        return [_build(AccessRequestInfo, r) for r in self._http.call(
            caller, "GET", "access/requests", params={"open_only": str(open_only).lower()})]


class RemoteAudit(_Unsupported):
    def __init__(self, http: _Http) -> None:
        self._http = http

    def tail(self, caller: Caller, n: int = 20,
             filters: AuditFilter | None = None) -> builtins.list[AuditView]:
        f = filters or AuditFilter()
        if f.path_prefix or f.since or f.until:
            raise errors.ConfigurationError("--path-prefix, --since and --until are not "
                                            "available through MLSECRETS_URL yet")
        params = {k: v for k, v in (("n", n), ("principal", f.principal),
                                    ("action", f.action), ("outcome", f.outcome))
                  if v is not None}
        return [_build(AuditView, r) for r in self._http.call(caller, "GET", "audit",
                                                               params=params)]


    def count(self, caller: Caller) -> int:
        return int(self._http.call(caller, "GET", "audit/count")["records"])

    def verify(self, caller: Caller, *, checkpoint: Checkpoint | None = None,
               all_seals: bool = False, progress: Progress | None = None) -> Report:
        if checkpoint is not None:
            raise errors.ConfigurationError("verifying against a checkpoint file is not "
                                            "available through MLSECRETS_URL")
        got = self._http.call(caller, "POST", "audit/verify", body={"all_seals": all_seals})
        report = Report(records=int(got["records"]), seals_checked=int(got["seals_checked"]),
                        chains=int(got["chains"]), problems=list(got["problems"]))
        if progress is not None:
            progress(report.records)
        return report


    def checkpoint(self, caller: Caller) -> Checkpoint:
        return Checkpoint.from_json(json.dumps(self._http.call(caller, "POST",
                                                               "audit/checkpoint")),
                                    "the service's answer")


class RemoteRotation(_Unsupported):
    def __init__(self, http: _Http) -> None:
        self._http = http

    def status(self, caller: Caller) -> builtins.list[RotationStatus]:
        return [_build(RotationStatus, r) for r in self._http.call(caller, "GET", "rotation")]

    def due(self, caller: Caller, now: datetime | None = None) -> builtins.list[str]:
        _service_clock(now)
        return [str(p) for p in self._http.call(caller, "GET", "rotation/due")]

    def rotate(self, caller: Caller, path: str, *, only_if_due: bool = False,
               after_step: Any = None) -> RotationResult:
        """As the vault's: no asset event (the rotation DAG emits its own)."""
        result, _ = self._rotate(caller, path, only_if_due, after_step, announce=False)
        return result

    def rotate_and_announce(self, caller: Caller, path: str, *,
                            only_if_due: bool = False) -> tuple[RotationResult, str | None]:
        """Rotate, and have the service emit the asset event a rotation by the DAG would
        (the API server's plugin can; ``mlsecrets serve`` says it cannot): the result, and
        what the service says of the event (``None`` when nothing was rotated)."""
        return self._rotate(caller, path, only_if_due, None, announce=True)

    def _rotate(self, caller: Caller, path: str, only_if_due: bool, after_step: Any, *,
                announce: bool) -> tuple[RotationResult, str | None]:
        if after_step is not None:
            raise errors.ConfigurationError("a step hook is not available through "
                                            "MLSECRETS_URL")
        got = self._http.call(caller, "POST", f"rotate/{_path(path)}",
                              body={"only_if_due": only_if_due, "announce": announce})
        event = got.get("asset_event") if isinstance(got, dict) else None
        return _build(RotationResult, got), (str(event) if event is not None else None)

    def retain(self, caller: Caller, now: datetime | None = None) -> builtins.list[str]:
        _service_clock(now)
        return [str(p) for p in self._http.call(caller, "POST", "rotation/retain")["destroyed"]]


def _service_clock(now: datetime | None) -> None:
    if now is not None:
        raise errors.ConfigurationError("the service decides with its own clock; 'now' is "
                                        "not available through MLSECRETS_URL")


class RemoteKeys(_Unsupported):
    def __init__(self, http: _Http) -> None:
        self._http = http

    def rotate(self, caller: Caller, *, new_version: bool = True, disable: bool = True,
               progress: Progress | None = None) -> RotationReport:
        got = self._http.call(caller, "POST", "keys/rotate",
                              body={"resume": not new_version, "keep_retired": not disable})
        report = _build(RotationReport, got)
        if progress is not None:
            progress(report.rewrapped + len(report.failed))
        return report


class RemoteAlerts(_Unsupported):
    def __init__(self, http: _Http) -> None:
        self._http = http

    def run(self, caller: Caller) -> PassResult:
        return _build(PassResult, self._http.call(caller, "POST", "alerts/evaluate"))

    def list(self, caller: Caller, *, open_only: bool = False, limit: int = 100
             ) -> builtins.list[AlertView]:
        return [_build(AlertView, r) for r in self._http.call(
            caller, "GET", "alerts", params={"open": open_only, "limit": limit})]

    def open(self, caller: Caller, *, limit: int = 100) -> builtins.list[AlertView]:
        return [_build(AlertView, r) for r in self._http.call(
            caller, "GET", "insight/alerts", params={"limit": limit})]

    def ack(self, caller: Caller, alert_id: int) -> AlertView:
        return _build(AlertView, self._http.call(caller, "POST", f"alerts/{int(alert_id)}/ack"))

    def test(self, caller: Caller) -> dict[str, str]:
        return {str(k): str(v) for k, v in self._http.call(caller, "POST", "alerts/test").items()}


class RemoteVault(_Unsupported):
    """What :class:`~..service.Vault` offers, over HTTP; see :func:`..open_vault`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        http = _Http(settings)
        self._http = http
        self.secrets = RemoteSecrets(http)
        self.access = RemoteAccess(http)
        self.audit = RemoteAudit(http)
        self.rotation = RemoteRotation(http)
        self.keys = RemoteKeys(http)
        self.break_glass = RemoteBreakGlass(http)
        self.alerts = RemoteAlerts(http)

    def status(self, caller: Caller) -> dict[str, object]:
        return dict(self._http.call(caller, "GET", "status"))

    def key_list(self, caller: Caller) -> builtins.list[KeyView]:
        return [_build(KeyView, r) for r in self._http.call(caller, "GET", "keys")]
