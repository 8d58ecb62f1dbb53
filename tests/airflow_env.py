"""A vault, a pipeline principal and an Airflow home with a migrated metadata database,
shared by the tests that go through Airflow's own paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from airflow_provider_mlsecrets.keys.softhsm import provision
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.settings import Settings

BACKEND = "airflow_provider_mlsecrets.secrets.backend.MLSecretsBackend"
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pw-canary-5d1e7a"
ENDPOINT = "https://registry.internal/canary-8c2f"
HARMLESS = "registry-canary-3b9a"


@dataclass
class AirflowEnv:
    home: Path
    vault: Vault
    admin: Caller
    pipeline_token: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, workers: bool = False,
            **extra: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **extra}
        kwargs = json.dumps({"token_file": str(self.pipeline_token)})
        if workers:
            env.update(AIRFLOW__WORKERS__SECRETS_BACKEND=BACKEND,
                       AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS=kwargs)
        else:
            env.update(AIRFLOW__SECRETS__BACKEND=BACKEND, AIRFLOW__SECRETS__BACKEND_KWARGS=kwargs)
        return subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True,
                              text=True, env=env, timeout=300, check=False)

    def audit(self, n: int = 10) -> list[tuple[str, str, str, dict[str, object]]]:
        return [(r.principal, r.path, r.outcome, r.context)
                for r in self.vault.audit.tail(self.admin, n) if r.action == "secret.inject"]


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowEnv]:
    base = tmp_path_factory.mktemp("airflow")
    vault_home = base / "vault"
    dev = provision(vault_home, "mlsecrets")
    settings = Settings(home=vault_home, db_url=f"sqlite:///{vault_home / 'vault.db'}",
                        pkcs11_module=dev.module, pkcs11_pin_file=dev.pin_file,
                        softhsm2_conf=dev.conf)
    (vault_home / "config.json").write_text(json.dumps(settings.as_config()))
    vault = Vault(settings)
    admin = Caller(vault.initialise().admin_token)
    conn = {"conn_type": "postgres", "host": "db.internal", "login": "ml", "password": PASSWORD,
            "port": 5432, "schema": "features", "extra": {"sslmode": "require"}}
    vault.secrets.put(admin, "connections/mlsecrets_example_db", json.dumps(conn).encode())
    vault.secrets.put(admin, "connections/uri_db",
                      f"mysql://app:{PASSWORD}@mysql.internal:3306/app".encode())
    vault.secrets.put(admin, "variables/mlsecrets_example_endpoint", ENDPOINT.encode())
    vault.secrets.put(admin, "variables/model_registry_url", HARMLESS.encode())
    vault.secrets.put(admin, "connections/not_granted", b"postgres://u:vault-pw@h/db")
    vault.secrets.put(admin, "config/fernet_key", b"fernet-canary-value-7")
    token = vault.access.create_principal(admin, "airflow-pipeline", "pipeline")
    for pattern in ("connections/mlsecrets_*", "connections/uri_db", "variables/**",
                    "config/**"):
        vault.access.grant(admin, "airflow-pipeline", pattern, ["inject"])
    token_file = base / "pipeline.token"
    token_file.write_text(token)
    home = base / "airflow"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "MLSECRETS_"))}
    env.update(AIRFLOW_HOME=str(home), MLSECRETS_HOME=str(vault_home),
               AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "example_dags"),
               AIRFLOW__API_AUTH__JWT_SECRET="test-only-" + "0123456789abcdef" * 4)
    air = AirflowEnv(home=home, vault=vault, admin=admin, pipeline_token=token_file, env=env)
    migrated = air.run("db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    yield air


