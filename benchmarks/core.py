"""Vault-core speed figures, side by side in one run on one SoftHSM2 token and SQLite:

* the raw HSM rate (PKCS#11 AES-GCM wrap + unwrap of a 32-byte data key, one HMAC),
* envelope seal + open (one HSM wrap or unwrap plus software AES-GCM),
* vault put and read through the service (authenticate, authorise, envelope, durable
  SQLite commit with ``synchronous=FULL``, HSM-sealed audit record): median and p99,
* audit verification rate (software SHA-256 chain; one HSM seal check).

Run: ``.venv/bin/python benchmarks/core.py [--json] [--records N]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import scratch
from _stats import summary, timings

from airflow_provider_mlsecrets.audit import log as audit_log
from airflow_provider_mlsecrets.audit.record import Entry, Outcome, format_ts
from airflow_provider_mlsecrets.crypto.envelope import Binding, Envelope
from airflow_provider_mlsecrets.keys import KekId, MacKey
from airflow_provider_mlsecrets.keys.cache import uncached
from airflow_provider_mlsecrets.keys.softhsm import provision
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--records", type=int, default=100_000, help="audit records to verify")
    parser.add_argument("-n", type=int, default=300, help="samples per operation")
    args = parser.parse_args()

    home = scratch("mlsecrets-bench-")
    dev = provision(home, "bench")
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'vault.db'}",
                        pkcs11_module=dev.module, pkcs11_token="bench",
                        pkcs11_pin_file=dev.pin_file, softhsm2_conf=dev.conf)
    vault = Vault(settings)
    admin = Caller(vault.initialise().admin_token)
    keys = uncached(vault.core.keys)  # the HSM itself, not the vault's key cache
    kek = KekId("mlsecrets-kek-1")
    data_key, ad = os.urandom(32), b"associated-data"
    wrapped = keys.wrap(kek, data_key, ad)
    envelope = Envelope(keys)
    binding = Binding(vault_id=str(uuid.uuid4()), path="bench/x", version=1)
    sealed = envelope.seal(b"v" * 64, binding, kek)
    vault.secrets.put(admin, "bench/read", b"v" * 64)
    counter = iter(range(10**9))

    results = {
        "hsm_wrap_plus_unwrap": summary(timings(
            lambda: keys.unwrap(kek, keys.wrap(kek, data_key, ad), ad), args.n)),
        "hsm_unwrap": summary(timings(lambda: keys.unwrap(kek, wrapped, ad), args.n)),
        "hsm_hmac": summary(timings(lambda: keys.mac(MacKey.AUDIT, ad), args.n)),
        "envelope_seal": summary(timings(lambda: envelope.seal(b"v" * 64, binding, kek), args.n)),
        "envelope_open": summary(timings(lambda: envelope.open(sealed, binding), args.n)),
        "vault_put_sqlite_full": summary(timings(
            lambda: vault.secrets.put(admin, f"bench/p{next(counter)}", b"v" * 64), args.n)),
        "vault_read_sqlite_full": summary(timings(
            lambda: vault.secrets.read(admin, "bench/read", reason="in a test"), args.n)),
    }
    with vault.core.transaction() as session:  # a large trail, appended in one transaction
        vault_id = vault.core.vault_id(session)
        for i in range(args.records):
            audit_log.append(session, keys, Entry(
                ts=format_ts(datetime.now(timezone.utc)), principal="bench", roles="pipeline",
                action="secret.inject", path=f"bench/{i % 100}", version=1,
                outcome=Outcome.ALLOWED.value, reason="grant of inject on bench/**",
                request_id=str(uuid.uuid4()), context='{"dag_id":"bench"}'), vault_id)
    start = time.perf_counter()
    report = vault.audit.verify(admin)
    elapsed = time.perf_counter() - start
    results["audit_verify"] = {"records": report.records, "seconds": elapsed,
                               "per_second": report.records / elapsed}
    results["ratios"] = {"read_vs_raw_hsm_wrap_unwrap": results["vault_read_sqlite_full"][
        "median_us"] / results["hsm_wrap_plus_unwrap"]["median_us"]}

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'operation':<26} {'median µs':>10} {'p99 µs':>10} {'per second':>12}")
    for name, row in results.items():
        if "median_us" in row:
            print(f"{name:<26} {row['median_us']:>10.1f} {row['p99_us']:>10.1f} "
                  f"{row['per_second']:>12,.0f}")
    v = results["audit_verify"]
    print(f"{'audit_verify':<26} {v['records']:>10,} records in {v['seconds']:.2f} s = "
          f"{v['per_second']:,.0f} records/s")
    print(f"a full vault read costs {results['ratios']['read_vs_raw_hsm_wrap_unwrap']:.1f}x the "
          "raw HSM wrap+unwrap (both measured above)")


if __name__ == "__main__":
    main()
