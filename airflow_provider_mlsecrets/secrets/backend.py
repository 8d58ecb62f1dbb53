"""``MLSecretsBackend``: Airflow's connections, variables and config from the vault.

Configure it as ``[secrets] backend`` (API server, scheduler, DAG processor) and/or
``[workers] secrets_backend`` (inside each task), with ``backend_kwargs`` such as
``{"token_file": "/run/secrets/mlsecrets-pipeline.token", "connections_lookup_pattern": "^ml_"}``
(see docs/airflow.md). Every lookup is an ``inject`` by the configured pipeline principal,
audited with the task's identity.

The search chain contract: ``None`` means "not here, ask the next backend"; any refusal
(a policy deny, an integrity failure, an unreachable HSM or database) raises
:class:`AirflowSecretsBackendAccessDenied`, which stops the chain so a lower backend can
never serve a secret of the same name.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
from airflow.secrets.base_secrets import BaseSecretsBackend

from airflow_provider_mlsecrets.errors import InvalidInput, MLSecretsError, NotFound
from airflow_provider_mlsecrets.injection.resolve import SECRET_KEY_PREFIX
from airflow_provider_mlsecrets.masking import mask
from airflow_provider_mlsecrets.paths import parse_path

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.service import Caller, Vault

log = logging.getLogger(__name__)
_SETTINGS = ("home", "db_url", "pkcs11_module", "pkcs11_token", "pkcs11_pin_file",
             "softhsm2_conf", "key_prefix", "token_file")

class MLSecretsBackend(BaseSecretsBackend):
    """Connections, variables and config from the mlsecrets vault.

    :param connections_prefix: vault folder of connections (``None`` turns them off)
    :param variables_prefix: vault folder of variables (``None`` turns them off)
    :param config_prefix: vault folder of config values (``None`` turns them off)
    :param connections_lookup_pattern: only ids matching this regex are looked up
    :param variables_lookup_pattern: only keys matching this regex are looked up
    :param config_lookup_pattern: only keys matching this regex are looked up
    :param token_file: the pipeline principal's token (else ``MLSECRETS_TOKEN_FILE`` or
        ``MLSECRETS_TOKEN``); any other vault setting by its name (``home``, ``db_url``,
        ``pkcs11_module``, ``pkcs11_token``, ``pkcs11_pin_file``, ``softhsm2_conf``,
        ``key_prefix``), else the ``MLSECRETS_*`` environment.
    """

    def __init__(self, connections_prefix: str | None = "connections",
                 variables_prefix: str | None = "variables", config_prefix: str | None = "config",
                 connections_lookup_pattern: str | None = None,
                 variables_lookup_pattern: str | None = None,
                 config_lookup_pattern: str | None = None, **settings: str) -> None:
        super().__init__()
        unknown = set(settings) - set(_SETTINGS)
        if unknown:
            raise ValueError(f"MLSecretsBackend got unknown backend_kwargs {sorted(unknown)}; "
                             f"it takes the prefixes, the lookup patterns and {_SETTINGS}")
        self.kinds = {
            "connection": _Kind(connections_prefix, connections_lookup_pattern),
            "variable": _Kind(variables_prefix, variables_lookup_pattern),
            "config": _Kind(config_prefix, config_lookup_pattern),
        }
        self._settings = dict(settings)
        self._vault: Vault | None = None
        self._pid: int | None = None

    # -- BaseSecretsBackend ----------------------------------------------------------
    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        """As the base class, but the connection is built once and that one is masked
        (building an Airflow ``Connection`` is most of a lookup's cost outside the vault)."""
        value = self._lookup("connection", conn_id)
        if not value:
            return None
        conn = self.deserialize_connection(conn_id=conn_id, value=value)
        _mask_parts(conn)
        return conn

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        value = self._lookup("connection", conn_id)
        if value is not None:
            self._mask_connection(conn_id, value)
        return value

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        return self._lookup("variable", key)

    def get_config(self, key: str) -> str | None:
        return self._lookup("config", key)

    async def aget_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        from asgiref.sync import sync_to_async

        value: str | None = await sync_to_async(self.get_conn_value, thread_sensitive=True)(
            conn_id, team_name)
        return value

    async def aget_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        value = await self.aget_conn_value(conn_id, team_name)
        return None if value is None else self.deserialize_connection(conn_id, value)

    async def aget_variable(self, key: str, team_name: str | None = None) -> str | None:
        from asgiref.sync import sync_to_async

        value: str | None = await sync_to_async(self.get_variable, thread_sensitive=True)(
            key, team_name)
        return value

    # -- the lookup ------------------------------------------------------------------
    def path_for(self, kind: str, identifier: str) -> str | None:
        """The vault path of ``identifier``, or ``None`` if this backend does not serve it."""
        if kind == "variable" and identifier.startswith(SECRET_KEY_PREFIX):
            # any vault path, as a variable: how a worker with no vault settings reaches a
            # secret: only for a task's verified Execution API request (elsewhere the
            # prefixes and patterns below decide, and such a key is not ours)
            if not _in_execution_request():
                return None
            try:
                return parse_path(identifier.removeprefix(SECRET_KEY_PREFIX))
            except InvalidInput:
                return None
        spec = self.kinds[kind]
        if spec.prefix is None:
            return None
        if spec.pattern is not None and not spec.pattern.match(identifier):
            return None
        try:
            return parse_path(self.build_path(spec.prefix, identifier))
        except InvalidInput:
            return None  # an id the vault grammar cannot hold is not ours to serve

    def _lookup(self, kind: str, identifier: str) -> str | None:
        path = self.path_for(kind, identifier)
        if path is None:
            return None
        try:
            vault = self._get_vault()
            raw = vault.secrets.inject(self._caller(vault), path)
        except NotFound:
            if kind == "variable" and identifier.startswith(SECRET_KEY_PREFIX):
                # the namespace is ours: no other source may answer for a missing secret
                raise AirflowSecretsBackendAccessDenied(
                    f"mlsecrets has no secret at {path}") from None
            return None
        except MLSecretsError as exc:
            log.error("mlsecrets refused the %s %r (%s): %s", kind, identifier,
                      type(exc).__name__, exc)
            raise AirflowSecretsBackendAccessDenied(
                f"mlsecrets refused the {kind} {identifier!r}: {exc}") from None
        except Exception as exc:
            # Anything unforeseen must stop the chain too: falling through would let a lower
            # backend serve this name. Only the type is shown: its text is not ours.
            log.error("mlsecrets failed on the %s %r (%s)", kind, identifier,
                      type(exc).__name__)
            raise AirflowSecretsBackendAccessDenied(
                f"mlsecrets failed on the {kind} {identifier!r} ({type(exc).__name__})"
            ) from None
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AirflowSecretsBackendAccessDenied(
                f"the {kind} {identifier!r} in mlsecrets is not UTF-8 text") from None
        mask(value)
        return value

    @staticmethod
    def _caller(vault: Vault) -> Caller:
        """Who looks this up. Inside the Airflow API server, serving a task's lookup that fell
        through the Execution API, it is that task's DAG (``dag:DAG_ID``), verified from the
        task's own token, and never this server's token; anywhere else, this process's
        configured token and the task it runs, if any."""
        from airflow_provider_mlsecrets.airflow_context import caller_context
        from airflow_provider_mlsecrets.service import Caller

        if _in_execution_request():
            from airflow_provider_mlsecrets.api.airflow_plugin import task_identity

            task = task_identity()  # refuses rather than fall back to this server's token
            context = {**caller_context(), "component": "airflow api-server",
                       "verified_by": "execution-api", **task}
            return Caller(None, context, verified=(f"dag:{task['dag_id']}",))
        return Caller(vault.settings.read_caller_token(), caller_context())

    def _get_vault(self) -> Vault:
        if self._vault is None or self._pid != os.getpid():
            from airflow_provider_mlsecrets.client import open_vault
            from airflow_provider_mlsecrets.settings import Settings

            self._vault = open_vault(Settings.load(overrides=self._settings))
            self._pid = os.getpid()
        return self._vault

    def _mask_connection(self, conn_id: str, value: str) -> None:
        """Mask the password and the URI form too, not only the stored text."""
        try:
            conn = self.deserialize_connection(conn_id, value)
        except Exception:  # malformed: the raw text is masked already; Airflow will complain
            return
        _mask_parts(conn)


def _mask_parts(conn: Any) -> None:
    """The password as Airflow decodes it and the connection's URI form (which may escape
    the password differently from the stored text)."""
    for part in (conn.password, conn.get_uri()):
        if part:
            mask(part)


class _Kind:
    def __init__(self, prefix: str | None, pattern: str | None) -> None:
        self.prefix = prefix.strip("/") if prefix is not None else None
        try:
            self.pattern = re.compile(pattern) if pattern is not None else None
        except re.error as exc:
            raise ValueError(f"invalid lookup pattern {pattern!r}: {exc}") from None


def _in_execution_request() -> bool:
    """Whether this process is the Airflow API server serving a task's Execution API
    request (the plugin's middleware says so; nowhere else is it loaded and set)."""
    if "airflow_provider_mlsecrets.api.airflow_plugin" not in sys.modules:
        return False
    from airflow_provider_mlsecrets.api.airflow_plugin import in_execution_request

    return in_execution_request()
