"""Audit trail figures on SQLite (``synchronous=FULL``) and, when it is reachable, PostgreSQL,
side by side in one run on one SoftHSM2 token:

* append: one record per durably committed transaction (lock the chain head, SHA-256, HSM
  seal, insert, commit), which is what every vault operation adds: median, p99, per second;
  and the same when the head was written by another process, so that its seal is checked
  in the HSM before the vault chains onto it (the worst case of the append rule);
* mark: moving the HSM's high-water mark of a chain (lock the head, read the mark, walk the
  records since, check the head's seal, write a token object), after 1 and after 1,000
  records, which the vault does at most once a minute per process and chain;
* verify: ``vault.audit.verify`` over a trail of ``--records`` records (default 1,000,000),
  in records per second, against the goal of 200,000 records/s on one core, and how long
  its row-generation check (audit/freshness.py, a scan of the trail's contexts) takes alone;
* storage: bytes per record on disk, indexes included (SQLite file growth after a WAL
  checkpoint; PostgreSQL ``pg_total_relation_size('mlsecrets_audit')``), over a sample of
  fully sealed lookup records, and what a million audited lookups add.

Run: ``.venv/bin/python benchmarks/audit.py [-n 300] [--records 1000000] [--json]``
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import Bench, fill_audit, new_vault, pg_database, pg_table_bytes, scratch
from _stats import summary, timings

from airflow_provider_mlsecrets.audit import freshness
from airflow_provider_mlsecrets.audit import log as audit_log
from airflow_provider_mlsecrets.audit.record import Entry, Outcome, format_ts

GOAL = 200_000
CONTEXT = ('{"component":"task","dag_id":"train_model","host":"worker-1","map_index":-1,'
           '"pid":4242,"run_id":"scheduled__2026-01-01T00:00:00+00:00",'
           '"task_id":"fetch_features","try_number":1}')


def measure(bench: Bench, n: int, records: int, sample: int,
            size: Callable[[], int]) -> dict[str, Any]:
    vault, keys = bench.vault, bench.vault.core.keys
    with vault.core.transaction() as session:
        vault_id = vault.core.vault_id(session)

    def append() -> None:
        with vault.core.transaction() as session:
            audit_log.append(session, keys, Entry(
                ts=format_ts(datetime.now(timezone.utc)), principal="airflow-pipeline",
                roles="pipeline", action="secret.inject", path="connections/warehouse",
                version=1, outcome=Outcome.ALLOWED.value,
                reason="grant inject on connections/**", request_id=str(uuid.uuid4()),
                context=CONTEXT), vault_id)

    def append_after_another_writer() -> None:
        audit_log._CHECKED.clear()  # what a process sees after another one appended
        append()

    row: dict[str, Any] = {"append": summary(timings(append, n, warmup=10)),
                           "append_head_checked": summary(timings(
                               append_after_another_writer, n, warmup=10))}
    marks: dict[str, Any] = {}
    for since in (1, 1000):
        samples = []
        for _ in range(max(3, n // 30)):
            for _ in range(since):
                append()
            start = time.perf_counter()
            vault.core.marks.advance(1)
            samples.append(time.perf_counter() - start)
        marks[f"after_{since}"] = summary(samples)
    row["mark"] = marks
    fill_audit(vault, max(0, records - sample))
    before = size()
    fill_audit(vault, sample, seal_all=True)  # every record sealed, as the vault writes them
    per_record = (size() - before) / sample
    row["storage"] = {"bytes_per_record": per_record,
                      "mib_per_million_lookups": per_record * 1e6 / 2**20}
    start = time.perf_counter()
    report = vault.audit.verify(bench.admin)
    elapsed = time.perf_counter() - start
    with vault.core.engine.connect() as connection:  # the share of the row-generation check
        start = time.perf_counter()
        freshness.behind(connection)
        generations = time.perf_counter() - start
    row["verify"] = {"records": report.records, "seconds": elapsed,
                     "per_second": report.records / elapsed, "goal_per_second": GOAL,
                     "row_generations_seconds": generations}
    return row


def sqlite_size(path: Path) -> Callable[[], int]:
    def size() -> int:
        with sqlite3.connect(path) as c:  # fold the WAL into the file first
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return path.stat().st_size
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-n", type=int, default=300, help="timed appends per database")
    parser.add_argument("--records", type=int, default=1_000_000, help="trail to verify")
    parser.add_argument("--sample", type=int, default=20_000,
                        help="sealed records the storage figure is measured over")
    args = parser.parse_args()
    base = scratch("mlsecrets-audit-")
    sample = min(args.sample, args.records)

    results: dict[str, Any] = {}
    bench = new_vault(base)
    results["sqlite"] = measure(bench, args.n, args.records, sample,
                                sqlite_size(base / "vault.db"))
    with pg_database() as url:
        if url is None:
            results["postgres"] = {"skipped": "PostgreSQL at 127.0.0.1:5432 is unreachable"}
        else:
            bench = new_vault(base, url, key_prefix="pgbench")
            results["postgres"] = measure(bench, args.n, args.records, sample,
                                          lambda: pg_table_bytes(url))

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"audit trail: {args.n} timed appends, then a {args.records:,}-record trail verified")
    print(f"{'database':<10}{'append median':>15}{'p99':>10}{'appends/s':>11}"
          f"{'verify records/s':>18}{'B/record':>10}{'MiB per 1M lookups':>20}")
    for name, row in results.items():
        if "skipped" in row:
            print(f"{name:<10}skipped: {row['skipped']}")
            continue
        a, v, s = row["append"], row["verify"], row["storage"]
        print(f"{name:<10}{a['median_us']:>13.0f}us{a['p99_us']:>8.0f}us"
              f"{a['per_second']:>11,.0f}{v['per_second']:>18,.0f}"
              f"{s['bytes_per_record']:>10.0f}{s['mib_per_million_lookups']:>20.0f}")
    print(f"{'database':<10}{'append, head checked in HSM':>29}{'p99':>10}"
          f"{'mark after 1 rec':>18}{'after 1000':>12}")
    for name, row in results.items():
        if "skipped" in row:
            continue
        h, m = row["append_head_checked"], row["mark"]
        print(f"{name:<10}{h['median_us']:>27.0f}us{h['p99_us']:>8.0f}us"
              f"{m['after_1']['median_us'] / 1000:>16.1f}ms"
              f"{m['after_1000']['median_us'] / 1000:>10.1f}ms")
    for name, row in results.items():
        if "verify" in row:
            v = row["verify"]
            print(f"{name}: verified {v['records']:,} records in {v['seconds']:.2f} s = "
                  f"{v['per_second']:,.0f}/s (goal >= {GOAL:,}/s: "
                  f"{'met' if v['per_second'] >= GOAL else 'NOT met'}), of which the "
                  f"row-generation check {v['row_generations_seconds']:.2f} s")


if __name__ == "__main__":
    main()
