"""Key rotation against the raw HSM, side by side in one run on one SoftHSM2 token and SQLite:

* the raw HSM rate: PKCS#11 AES-GCM unwrap of a data key under the current KEK plus its
  wrap under the same KEK, straight through the key provider (no cache, no database);
* a full KEK rotation of a vault holding ``--secrets`` secrets (``vault.keys.rotate``, what
  ``mlsecrets key rotate`` runs: a new KEK, every data key re-wrapped in audited batches,
  the old KEK disabled), in versions re-wrapped per second, and its ratio to the raw rate
  (goal: at least 0.7).

Run: ``.venv/bin/python benchmarks/rewrap.py [--secrets 2000] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import new_vault, scratch
from _stats import summary, timings

from airflow_provider_mlsecrets.crypto.envelope import Binding
from airflow_provider_mlsecrets.keys import KekId
from airflow_provider_mlsecrets.keys.pkcs11 import PKCS11KeyProvider

GOAL = 0.7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--secrets", type=int, default=2000, help="secrets in the vault")
    parser.add_argument("-n", type=int, default=0,
                        help="raw unwrap+wrap pairs to time (default: as many as secrets)")
    args = parser.parse_args()
    bench = new_vault(scratch("mlsecrets-rewrap-"))
    vault, admin = bench.vault, bench.admin
    for i in range(args.secrets):
        vault.secrets.put(admin, f"ml/rewrap/s{i:05d}", os.urandom(48))

    # the raw HSM: the same token and KEK, with the associated data a rotation uses
    raw = PKCS11KeyProvider(bench.settings)
    kek = KekId(f"{bench.settings.key_prefix}-kek-1")
    pairs = args.n or args.secrets
    blobs = []
    for i in range(pairs):
        ad = Binding(vault_id="0" * 36, path=f"ml/rewrap/s{i:05d}", version=1).key_ad(kek)
        blobs.append((raw.wrap(kek, os.urandom(32), ad), ad))
    todo = iter(blobs)

    def pair() -> None:
        wrapped, ad = next(todo)
        raw.wrap(kek, raw.unwrap(kek, wrapped, ad), ad)

    hsm = summary(timings(pair, pairs))

    start = time.perf_counter()
    report = vault.keys.rotate(admin)
    elapsed = time.perf_counter() - start
    rotation: dict[str, Any] = {
        "rewrapped": report.rewrapped, "failed": len(report.failed), "seconds": elapsed,
        "per_second": report.rewrapped / elapsed, "current": report.current,
        "disabled": report.disabled}
    results = {"secrets": args.secrets, "hsm_unwrap_plus_wrap": hsm, "rotation": rotation,
               "ratio_to_raw_hsm": rotation["per_second"] / hsm["per_second"],
               "goal_ratio": GOAL}

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"KEK rotation of {args.secrets:,} secrets against the raw HSM (same token, same run)")
    print(f"{'what':<36}{'per second':>12}{'median':>11}{'p99':>11}")
    print(f"{'raw HSM unwrap + wrap (pairs)':<36}{hsm['per_second']:>12,.0f}"
          f"{hsm['median_us']:>9.0f}us{hsm['p99_us']:>9.0f}us")
    print(f"{'rotation: versions re-wrapped':<36}{rotation['per_second']:>12,.0f}"
          f"   {report.rewrapped:,} in {elapsed:.2f} s, {len(report.failed)} failed")
    ratio = results["ratio_to_raw_hsm"]
    print(f"rotation / raw HSM = {ratio:.2f}x (goal >= {GOAL}x: "
          f"{'met' if ratio >= GOAL else 'NOT met'}); now {report.current}, disabled "
          f"{', '.join(report.disabled) or 'nothing'}")


if __name__ == "__main__":
    main()
