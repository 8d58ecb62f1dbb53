"""A bounded soak on PostgreSQL: several processes with several threads each read, inject
and write secrets while secrets are rotated (the ``random`` rotator) and the key-encryption
key is rotated, on one SoftHSM2 token. Afterwards it proves, and prints:

* no wrong value: every value a reader got is a value that path held at some version;
* no lost write: every acknowledged write reads back at its version;
* every version of every secret decrypts;
* the audit chain verifies (every seal), and each worker principal's record count equals
  the operations it attempted (allowed or not).

Run: ``.venv/bin/python benchmarks/soak.py [--seconds 120] [--processes 3] [--threads 2]``
(exit 1 if any check fails). ``tests/test_soak.py`` runs a short one in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import new_vault, pg_database, scratch
from sqlalchemy import func, select

from airflow_provider_mlsecrets.errors import MLSecretsError
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.store.models import AuditRecord

WRITTEN = [f"soak/app{i}/key" for i in range(8)]   # values written by the writers
ROTATED = [f"soak/rotated{i}/key" for i in range(2)]  # values made by the random rotator


def digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


@dataclass
class Tally:
    """What one worker process did and saw."""

    ops: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    seen: set[tuple[str, str]] = field(default_factory=set)  # (path, sha256 of value)
    written: list[tuple[str, int, str]] = field(default_factory=list)  # acknowledged writes


def worker(n: int, settings: Settings, tokens: dict[str, str], threads: int, seconds: float,
           barrier: Barrier, out: Any) -> None:
    vault, tally, lock = Vault(settings), Tally(), threading.Lock()
    callers = {role: Caller(token, {"component": "soak", "pid": os.getpid()})
               for role, token in tokens.items()}
    barrier.wait()
    stop = time.monotonic() + seconds

    def loop(t: int) -> None:
        rng, counter = random.Random(n * 100 + t), 0
        while time.monotonic() < stop:
            kind = rng.choice(("read", "inject", "inject", "write"))
            path = rng.choice(WRITTEN + ROTATED) if kind != "write" else rng.choice(WRITTEN)
            try:
                if kind == "read":
                    value = vault.secrets.read(callers["reader"], path, reason="in a test")
                elif kind == "inject":
                    value = vault.secrets.inject(callers["injector"], path)
                else:
                    counter += 1
                    value = f"{path}|w{n}.{t}.{counter}".encode()
                    info = vault.secrets.put(callers["writer"], path, value)
                    with lock:
                        tally.written.append((path, info.version, digest(value)))
                with lock:
                    tally.ops[kind] += 1
                    tally.seen.add((path, digest(value)))
            except MLSecretsError as exc:
                with lock:
                    tally.ops[kind] += 1
                    tally.failures[f"{kind}: {type(exc).__name__}"] += 1

    pool = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put(tally)


def rotations(settings: Settings, admin: str, seconds: float, barrier: Barrier,
              out: Any) -> None:
    """Rotate the rotated secrets over and over, and the KEK half-way through."""
    vault, caller = Vault(settings), Caller(admin, {"component": "soak-rotation"})
    barrier.wait()
    stop, kek_at, done = time.monotonic() + seconds, time.monotonic() + seconds / 2, Counter()
    while time.monotonic() < stop:
        for path in ROTATED:
            vault.rotation.rotate(caller, path)
            done["secret rotations"] += 1
        if kek_at and time.monotonic() >= kek_at:
            report = vault.keys.rotate(caller)
            done["KEK rotations"] += 1
            done["data keys re-wrapped"] += report.rewrapped
            kek_at = 0.0
        time.sleep(0.2)
    out.put(done)


def soak(url: str, seconds: float, processes: int, threads: int) -> dict[str, Any]:
    home = scratch("mlsecrets-soak-")
    bench = new_vault(home, url)
    # keep every version, so that every acknowledged write can be read back at the end
    settings = dataclasses.replace(bench.settings, max_versions=10_000)
    vault, admin = Vault(settings), bench.admin
    for path in WRITTEN:
        vault.secrets.put(admin, path, f"{path}|initial".encode())
    for path in ROTATED:
        vault.secrets.put(admin, path, b"initial-rotated")
        vault.rotation.set_policy(admin, path, RotationPolicy(
            schedule="1d", rotator="random", config={"length": 24}, grace="1d"))
    tokens = {}
    for role, principal, capability in (("reader", "security_engineer", None),
                                        ("injector", "pipeline", "inject"),
                                        ("writer", "security_engineer", None)):
        name = f"soak-{role}"
        tokens[role] = vault.access.create_principal(admin, name, principal)
        if capability:
            vault.access.grant(admin, name, "soak/**", [capability])
    ctx = mp.get_context("spawn")
    barrier, out, done_q = ctx.Barrier(processes + 1), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(n, settings, tokens, threads, seconds,
                                              barrier, out)) for n in range(processes)]
    procs.append(ctx.Process(target=rotations, args=(settings, admin.token, seconds,
                                                     barrier, done_q)))
    started = time.monotonic()
    for p in procs:
        p.start()
    tallies = [out.get(timeout=seconds + 600) for _ in range(processes)]
    rotated = done_q.get(timeout=seconds + 600)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a soak process failed (exit code {p.exitcode})")
    elapsed = time.monotonic() - started
    return check(vault, admin, tallies, rotated, elapsed)


def check(vault: Vault, admin: Caller, tallies: list[Tally], rotated: Counter[str],
          elapsed: float) -> dict[str, Any]:
    ops, failures = Counter[str](), Counter[str]()
    seen: set[tuple[str, str]] = set()
    written: list[tuple[str, int, str]] = []
    for tally in tallies:
        ops.update(tally.ops)
        failures.update(tally.failures)
        seen |= tally.seen
        written += tally.written
    held: dict[str, dict[int, str]] = {}  # every version of every secret, decrypted
    undecryptable = 0
    for path in WRITTEN + ROTATED:
        held[path] = {}
        for info in vault.secrets.versions(admin, path):
            if info.state == "destroyed":
                continue
            try:
                held[path][info.version] = digest(vault.secrets.read(admin, path, info.version,
                        reason="in a test"))
            except MLSecretsError:
                undecryptable += 1
    wrong = sum(1 for path, value in seen if value not in held[path].values())
    lost = sum(1 for path, version, value in written if held[path].get(version) != value)
    report = vault.audit.verify(admin, all_seals=True)
    with vault.core.engine.connect() as c:
        recorded = dict(c.execute(select(AuditRecord.principal, func.count()).where(
            AuditRecord.principal.like("soak-%")).group_by(AuditRecord.principal)).all())
    expected = {"soak-reader": ops["read"], "soak-injector": ops["inject"],
                "soak-writer": ops["write"]}
    return {
        "seconds": round(elapsed, 1), "operations": dict(ops),
        "operations_per_second": round(sum(ops.values()) / elapsed),
        "failures": dict(failures), **dict(rotated),
        "versions_decrypted": sum(len(v) for v in held.values()),
        "undecryptable_versions": undecryptable, "wrong_values": wrong,
        "acknowledged_writes": len(written), "lost_writes": lost,
        "audit_verified": report.ok, "audit_records": report.records,
        "audit_counts_match": recorded == expected,
    }


def passed(result: dict[str, Any]) -> bool:
    return (result["wrong_values"] == 0 and result["lost_writes"] == 0
            and result["undecryptable_versions"] == 0 and result["audit_verified"]
            and result["audit_counts_match"] and not result["failures"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--server", default=None, help="PostgreSQL server URL (default: "
                        "postgresql+psycopg://postgres@127.0.0.1:5432/test's cluster)")
    args = parser.parse_args()
    with (pg_database(args.server) if args.server else pg_database()) as url:
        if url is None:
            raise SystemExit("soak: PostgreSQL is not reachable on 127.0.0.1:5432")
        result = soak(url, args.seconds, args.processes, args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"soak on PostgreSQL: {args.processes} processes x {args.threads} threads, "
              f"plus secret and KEK rotation, {result['seconds']} s")
        for key, value in result.items():
            print(f"  {key:<26} {value}")
        print("PASSED" if passed(result) else "FAILED")
    sys.exit(0 if passed(result) else 1)


if __name__ == "__main__":
    main()
