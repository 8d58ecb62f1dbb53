"""Lookup throughput on PostgreSQL with 1, 2 and 4 processes, in one run on one SoftHSM2
token: each process (started with ``spawn``, so it inherits no session or connection) opens
its own vault on the same throwaway database and token, warms up, waits at a common barrier,
then calls ``vault.secrets.inject`` (authenticate, authorise, HSM unwrap, AES-GCM, a durable
HSM-sealed audit record) in a loop for ``--seconds``. Prints lookups/s per process count
and the ratios 2p/1p (goal >= 1.6) and 4p/2p (goal >= 1.0).

Run: ``.venv/bin/python benchmarks/concurrency.py [--seconds 10] [--json]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import new_vault, pg_database, scratch

from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.settings import Settings

PATH = "ml/concurrency/api_key"
GOALS = {"2p/1p": 1.6, "4p/2p": 1.0}


def worker(settings: Settings, token: str, seconds: float, warmup: int, barrier: Barrier,
           out: Any) -> None:
    vault, caller = Vault(settings), Caller(token, {"component": "bench", "pid": os.getpid()})
    for _ in range(warmup):  # logs in to the token, opens the pool, fills the caches
        vault.secrets.inject(caller, PATH)
    barrier.wait()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        vault.secrets.inject(caller, PATH)
        count += 1
    out.put((count, time.perf_counter() - start))


def run(processes: int, settings: Settings, token: str, seconds: float,
        warmup: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(settings, token, seconds, warmup, barrier, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a worker failed (exit code {p.exitcode})")
    lookups = sum(count for count, _ in results)
    return {"processes": processes, "lookups": lookups,
            "per_second": sum(count / elapsed for count, elapsed in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed run per count")
    parser.add_argument("--warmup", type=int, default=50, help="untimed lookups per process")
    args = parser.parse_args()
    with pg_database() as url:
        if url is None:
            print("PostgreSQL at 127.0.0.1:5432 is unreachable: nothing measured")
            return
        bench = new_vault(scratch("mlsecrets-conc-"), url)
        vault, admin = bench.vault, bench.admin
        vault.secrets.put(admin, PATH, b"sk-" + os.urandom(24).hex().encode())
        token = vault.access.create_principal(admin, "bench-pipeline", "pipeline")
        vault.access.grant(admin, "bench-pipeline", "ml/**", ["inject"])
        vault.core.engine.dispose()  # the workers open their own connections
        rows = [run(p, bench.settings, token, args.seconds, args.warmup) for p in (1, 2, 4)]
    rate = {row["processes"]: row["per_second"] for row in rows}
    ratios = {"2p/1p": rate[2] / rate[1], "4p/2p": rate[4] / rate[2]}
    if args.json:
        print(json.dumps({"seconds": args.seconds, "cpus": os.cpu_count(), "runs": rows,
                          "ratios": ratios, "goals": GOALS}, indent=2))
        return
    print(f"vault.secrets.inject on PostgreSQL, {args.seconds:g} s per run, "
          f"{os.cpu_count()} CPUs (the PostgreSQL server shares them)")
    print(f"{'processes':>9}{'lookups':>10}{'lookups/s':>12}")
    for row in rows:
        print(f"{row['processes']:>9}{row['lookups']:>10,}{row['per_second']:>12,.0f}")
    for name, value in ratios.items():
        print(f"{name} = {value:.2f}x (goal >= {GOALS[name]}x: "
              f"{'met' if value >= GOALS[name] else 'NOT met'})")


if __name__ == "__main__":
    main()
