"""Lookup throughput with 1, 2 and 4 processes, in one run on one SoftHSM2 token: each
process (started with ``spawn``, so it inherits no session or connection) opens its own
vault on the same throwaway database and token, warms up, waits at a common barrier, then
calls ``vault.secrets.inject`` (authenticate, authorise, HSM unwrap, AES-GCM, a durable
HSM-sealed audit record) in a loop for ``--seconds``.

PostgreSQL: lookups/s per process count and the ratios 2p/1p (goal >= 1.6) and 4p/2p (goal
>= 1.0). SQLite, which serialises writers: 8 processes with the vault's writer queue
(``store/sqlite.py``) and without it (SQLite's ``busy_timeout`` alone), side by side, with
lookups/s and the slowest single lookup, which is what a waiter that polls loses.

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
           out: Any, queued: bool) -> None:
    if not queued:  # SQLite's busy_timeout alone, as before the writer queue
        from airflow_provider_mlsecrets.store.sqlite import QueuedConnection

        def unqueued(self: QueuedConnection) -> None:
            self.execute("BEGIN IMMEDIATE")

        QueuedConnection.begin_immediate = unqueued  # type: ignore[method-assign]
    vault, caller = Vault(settings), Caller(token, {"component": "bench", "pid": os.getpid()})
    for _ in range(warmup):  # logs in to the token, opens the pool, fills the caches
        vault.secrets.inject(caller, PATH)
    barrier.wait()
    count, slowest, start = 0, 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        vault.secrets.inject(caller, PATH)
        slowest = max(slowest, time.perf_counter() - began)
        count += 1
    out.put((count, time.perf_counter() - start, slowest))


def run(processes: int, settings: Settings, token: str, seconds: float,
        warmup: int, queued: bool = True) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=worker,
                         args=(settings, token, seconds, warmup, barrier, out, queued))
             for _ in range(processes)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a worker failed (exit code {p.exitcode})")
    lookups = sum(count for count, _, _ in results)
    return {"processes": processes, "lookups": lookups,
            "per_second": sum(count / elapsed for count, elapsed, _ in results),
            "slowest_ms": 1000 * max(slowest for _, _, slowest in results)}


def prepare(bench: Any) -> str:
    """The secret and a pipeline that may inject it; its token."""
    vault, admin = bench.vault, bench.admin
    vault.secrets.put(admin, PATH, b"sk-" + os.urandom(24).hex().encode())
    token: str = vault.access.create_principal(admin, "bench-pipeline", "pipeline")
    vault.access.grant(admin, "bench-pipeline", "ml/**", ["inject"])
    vault.core.engine.dispose()  # the workers open their own connections
    return token


def sqlite_writers(seconds: float, warmup: int, processes: int = 8) -> list[dict[str, Any]]:
    """The same lookups on SQLite with the writer queue and without it, alternated twice so
    that drift falls on both."""
    bench = new_vault(scratch("mlsecrets-conc-sqlite-"))
    token = prepare(bench)
    rows = []
    for queued in (True, False, True, False):
        row: dict[str, Any] = run(processes, bench.settings, token, seconds, warmup, queued)
        rows.append({**row, "queue": "on" if queued else "off"})
    return rows


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
        token = prepare(bench)
        rows = [run(p, bench.settings, token, args.seconds, args.warmup) for p in (1, 2, 4)]
    rate = {row["processes"]: row["per_second"] for row in rows}
    ratios = {"2p/1p": rate[2] / rate[1], "4p/2p": rate[4] / rate[2]}
    sqlite_rows = sqlite_writers(args.seconds, args.warmup)
    if args.json:
        print(json.dumps({"seconds": args.seconds, "cpus": os.cpu_count(), "runs": rows,
                          "ratios": ratios, "goals": GOALS, "sqlite": sqlite_rows}, indent=2))
        return
    print(f"vault.secrets.inject on PostgreSQL, {args.seconds:g} s per run, "
          f"{os.cpu_count()} CPUs (the PostgreSQL server shares them)")
    print(f"{'processes':>9}{'lookups':>10}{'lookups/s':>12}")
    for row in rows:
        print(f"{row['processes']:>9}{row['lookups']:>10,}{row['per_second']:>12,.0f}")
    for name, value in ratios.items():
        print(f"{name} = {value:.2f}x (goal >= {GOALS[name]}x: "
              f"{'met' if value >= GOALS[name] else 'NOT met'})")
    print(f"\nvault.secrets.inject on SQLite, 8 processes, {args.seconds:g} s per run, the "
          "writer queue on and off in alternation")
    print(f"{'queue':>6}{'lookups':>10}{'lookups/s':>12}{'slowest lookup':>16}")
    for row in sqlite_rows:
        print(f"{row['queue']:>6}{row['lookups']:>10,}{row['per_second']:>12,.0f}"
              f"{row['slowest_ms']:>13,.0f} ms")


if __name__ == "__main__":
    main()
