"""The remote vault answers to the same calls as the embedded one: where a method exists on
both, its parameters match, so no surface needs to know which one it holds."""

from __future__ import annotations

import inspect

import pytest

from airflow_provider_mlsecrets.client import remote
from airflow_provider_mlsecrets.errors import ConfigurationError
from airflow_provider_mlsecrets.service.access import AccessService
from airflow_provider_mlsecrets.service.audit import AuditService
from airflow_provider_mlsecrets.service.rotation import RotationService
from airflow_provider_mlsecrets.service.secrets import SecretsService
from airflow_provider_mlsecrets.service.vault import Vault
from airflow_provider_mlsecrets.settings import Settings

PAIRS = [(remote.RemoteSecrets, SecretsService), (remote.RemoteAccess, AccessService),
         (remote.RemoteAudit, AuditService), (remote.RemoteRotation, RotationService),
         (remote.RemoteVault, Vault)]


def _public(cls: type) -> dict[str, object]:
    return {n: f for n, f in vars(cls).items() if callable(f) and not n.startswith("_")}


@pytest.mark.parametrize(("remote_cls", "local_cls"), PAIRS)
def test_remote_methods_take_the_same_parameters(remote_cls: type, local_cls: type) -> None:
    shared = set(_public(remote_cls)) & set(_public(local_cls))
    assert shared, remote_cls
    for name in shared:
        ours = inspect.signature(getattr(remote_cls, name))
        theirs = inspect.signature(getattr(local_cls, name))
        assert list(ours.parameters) == list(theirs.parameters), name


def test_what_http_cannot_do_is_a_clear_error(tmp_path: object) -> None:
    vault = remote.RemoteVault(Settings(home=tmp_path, db_url="sqlite://",  # type: ignore[arg-type]
                                        url="http://127.0.0.1:9"))
    with pytest.raises(ConfigurationError, match="not available through MLSECRETS_URL"):
        vault.keys.start(None)
    with pytest.raises(ConfigurationError, match="not available through MLSECRETS_URL"):
        vault.initialise()
    with pytest.raises(remote.ServiceUnavailable, match="cannot reach the vault service"):
        vault.status(remote.Caller("mls_x"))
