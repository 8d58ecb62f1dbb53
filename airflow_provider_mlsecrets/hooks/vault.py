"""``MLSecretsHook``: the vault from task code.

Where the vault is comes from the process's own ``MLSECRETS_*`` settings: ``MLSECRETS_URL``
(the vault service: the API server's ``/mlsecrets`` or ``mlsecrets serve``; a worker then
holds a token and no key), or the database and HSM settings of an embedded vault. A hook
never creates a vault: with neither, it fails saying what to set. The connection (type
``mlsecrets``, default id ``mlsecrets_default``, optional) may set one extra,
``token_file``: the file holding the principal's token (else ``MLSECRETS_TOKEN_FILE``).
Anything else in it (a host, another extra) is refused, because whoever may edit
connections must not choose the PKCS#11 library, database or service a token is sent to.
Every call is audited with the task's identity; values handed to a task are registered with
Airflow's masker.
"""

from __future__ import annotations

import builtins
from typing import Any

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_mlsecrets.airflow_context import caller_context
from airflow_provider_mlsecrets.client import open_existing_vault
from airflow_provider_mlsecrets.errors import ConfigurationError
from airflow_provider_mlsecrets.masking import mask
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.service.secrets import SecretInfo, VersionInfo
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.values import SecretValue

# connection extras -> vault settings. Only these: a connection is data that anyone who may
# edit connections (or run Airflow's connection test in the API server) controls, so it must
# not name a PKCS#11 library to load, a database, a PIN file or a service URL to send a token
# to; those come from the process's own MLSECRETS_* settings alone.
_EXTRAS = {"token_file": "token_file"}  # an extra's name, not a password # nosec B105


class MLSecretsHook(BaseHook):
    """Read, inject, write and list vault secrets from a task.

    :param mlsecrets_conn_id: the ``mlsecrets`` connection; if it does not exist the
        ``MLSECRETS_*`` environment alone configures the vault.
    """

    conn_name_attr = "mlsecrets_conn_id"
    default_conn_name = "mlsecrets_default"
    conn_type = "mlsecrets"
    hook_name = "ML Secrets vault"

    def __init__(self, mlsecrets_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mlsecrets_conn_id = mlsecrets_conn_id
        self._vault: Vault | None = None

    # -- what the vault offers -------------------------------------------------------
    def inject(self, path: str, version: int | None = None) -> str:
        """A secret's value for this task (``inject``), registered with the masker."""
        value = self.vault.secrets.inject(self.caller(), path, version).decode("utf-8")
        mask(value)
        return value

    def secret(self, path: str, version: int | None = None) -> SecretValue:
        """As :meth:`inject`, as a :class:`SecretValue`: it never shows itself in a log, an
        exception, a rendered template or an XCom; ``.reveal()`` where it is used."""
        value = self.inject(path, version)
        return SecretValue(value)

    def unseal(self, path: str, token: str) -> str:
        """A sealed value for this task (``inject`` on ``path``), registered with the masker."""
        value = self.vault.secrets.unseal(self.caller(), path, token).decode("utf-8")
        mask(value)
        return value

    def read(self, path: str, version: int | None = None, *, reason: str | None = None
             ) -> bytes:
        """Plaintext back to a person (``read``: a security engineer's token only, with the
        ``reason`` the audit record keeps)."""
        return self.vault.secrets.read(self.caller(), path, version, reason=reason)

    def write(self, path: str, value: bytes | str, *, cas: int | None = None,
              description: str | None = None) -> VersionInfo:
        data = value.encode("utf-8") if isinstance(value, str) else value
        return self.vault.secrets.put(self.caller(), path, data, cas=cas,
                                      description=description)

    def list(self, prefix: str = "") -> builtins.list[SecretInfo]:
        return self.vault.secrets.list(self.caller(), prefix)

    def versions(self, path: str) -> builtins.list[VersionInfo]:
        return self.vault.secrets.versions(self.caller(), path)

    def test_connection(self) -> tuple[bool, str]:
        """Reach the HSM and the database and authenticate; never touches a value."""
        try:
            status = self.vault.status(self.caller())
        except Exception as exc:  # the UI shows the message; our errors hold no values
            return False, f"{type(exc).__name__}: {exc}"
        return True, f"vault {status['vault_id']} as {status['you']}"

    # -- plumbing --------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The settings this hook would open the vault with (opening nothing)."""
        return Settings.load(overrides=self._overrides())

    def has_credential(self) -> bool:
        """Whether this process holds a principal token of its own. A service URL alone is
        none: such a worker asks through Airflow, as its DAG."""
        settings = self.settings
        return bool(settings.token or settings.token_file)

    @property
    def vault(self) -> Vault:
        if self._vault is None:
            self._vault = open_existing_vault(self.settings)
        return self._vault

    def _overrides(self) -> dict[str, str | None]:
        try:
            conn = self.get_connection(self.mlsecrets_conn_id)
        except Exception:  # no such connection: the environment configures the vault
            return {}
        extras = conn.extra_dejson
        refused = sorted(set(extras) - set(_EXTRAS))
        if refused or conn.host:
            raise ConfigurationError(
                f"the {self.mlsecrets_conn_id} connection may only set "
                f"{', '.join(sorted(_EXTRAS))}; the database, the HSM and the service URL come "
                f"from the MLSECRETS_* settings of the process (refused: "
                f"{', '.join(refused + (['host'] if conn.host else []))})")
        return {setting: extras.get(extra) for extra, setting in _EXTRAS.items()}

    def caller(self) -> Caller:
        """Who the hook acts as: its token, and the task or component asking."""
        return Caller(self.vault.settings.read_caller_token(), caller_context())
