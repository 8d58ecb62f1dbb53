"""Raw connection lookup, side by side in one process on one machine: ``MLSecretsBackend``
(HSM unwrap, AES-GCM, a durable HSM-sealed audit record per lookup, SQLite
``synchronous=FULL``) against Airflow's own ``MetastoreBackend`` (Fernet, SQLite),
``EnvironmentVariablesBackend`` and ``LocalFilesystemBackend``, for the same connection.

A last row moves the HSM's high-water mark of the audit trail after every lookup
(``MLSECRETS_AUDIT_MARK_INTERVAL=0``) instead of at most once a minute (the default, in the
row above it), to show what a mark costs and that the default keeps it off the median.

Prints median and p99 per lookup and the ratio to the metastore; ``--json`` for machines.
Run: ``.venv/bin/python benchmarks/lookup.py [-n 300] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import scratch
from _stats import summary, timings

URI = "postgresql://trainer:bench-pa55word@warehouse.internal:5432/features"


def prepare(base: Path) -> dict[str, str]:
    """An Airflow home with a migrated SQLite metadata database, a Fernet key, the connection
    in its metastore, in the environment and in a connections file, and a vault holding it."""
    from cryptography.fernet import Fernet

    env = {"AIRFLOW_HOME": str(base / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
           "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
           "AIRFLOW_CONN_BENCH_DB": URI}
    os.environ.update(env)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   capture_output=True, env={**os.environ})
    (base / "connections.json").write_text(json.dumps({"bench_db": URI}))
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-n", type=int, default=300, help="samples per backend")
    args = parser.parse_args()
    base = scratch("mlsecrets-lookup-")
    prepare(base)

    from airflow.models.connection import Connection
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend
    from airflow.secrets.local_filesystem import LocalFilesystemBackend
    from airflow.secrets.metastore import MetastoreBackend
    from airflow.utils.session import create_session

    from airflow_provider_mlsecrets.keys.softhsm import provision
    from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend
    from airflow_provider_mlsecrets.service import Caller, Vault
    from airflow_provider_mlsecrets.settings import Settings

    with create_session() as session:
        session.add(Connection(conn_id="bench_db", uri=URI))

    home = base / "vault"
    dev = provision(home, "mlsecrets")
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'vault.db'}",
                        pkcs11_module=dev.module, pkcs11_pin_file=dev.pin_file,
                        softhsm2_conf=dev.conf)
    vault = Vault(settings)
    result = vault.initialise()
    admin = Caller(result.admin_token)
    vault.secrets.put(admin, "connections/bench_db", URI.encode())
    token = vault.access.create_principal(admin, "bench", "pipeline")
    vault.access.grant(admin, "bench", "connections/**", ["inject"])
    (base / "bench.token").write_text(token)
    os.environ.update({"MLSECRETS_HOME": str(home)})
    (home / "config.json").write_text(json.dumps(settings.as_config()))

    instances = {
        "MetastoreBackend (Fernet, SQLite)": MetastoreBackend(),
        "EnvironmentVariablesBackend": EnvironmentVariablesBackend(),
        "LocalFilesystemBackend": LocalFilesystemBackend(
            connections_file_path=str(base / "connections.json")),
        "MLSecretsBackend (HSM, audited, SQLite FULL)": MLSecretsBackend(
            token_file=str(base / "bench.token")),
    }
    backends: dict[str, Callable[[], object]] = {
        name: (lambda b=backend: b.get_connection("bench_db"))  # type: ignore[misc]
        for name, backend in instances.items()}
    for name, lookup in backends.items():
        conn = lookup()
        assert getattr(conn, "password", None) == "bench-pa55word", name
    rows = {name: summary(timings(lookup, args.n, warmup=20)) for name, lookup in backends.items()}
    os.environ["MLSECRETS_AUDIT_MARK_INTERVAL"] = "0"
    marking = MLSecretsBackend(token_file=str(base / "bench.token"))
    rows["MLSecretsBackend, HSM mark after every lookup"] = summary(timings(
        lambda: marking.get_connection("bench_db"), args.n, warmup=20))
    metastore = rows["MetastoreBackend (Fernet, SQLite)"]["median_us"]
    for row in rows.values():
        row["ratio_to_metastore"] = row["median_us"] / metastore
    if args.json:
        print(json.dumps({"samples": args.n, "backends": rows}, indent=2))
        return
    print(f"connection lookup, {args.n} samples each (same process, same connection)")
    print(f"{'backend':<46}{'median':>12}{'p99':>12}{'x metastore':>13}")
    for name, row in rows.items():
        print(f"{name:<46}{row['median_us']:>10.0f}us{row['p99_us']:>10.0f}us"
              f"{row['ratio_to_metastore']:>12.2f}x")


if __name__ == "__main__":
    main()
