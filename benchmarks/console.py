"""The security console's views and an access review on a large vault: ``--secrets`` secrets
(default 10,000) and ``--records`` audit records (default 1,000,000), on SQLite and, when it
is reachable, PostgreSQL, side by side on one SoftHSM2 token.

How the vault is built (in a few minutes, not the hours that a million audited operations
one by one would take):

* the secrets: real rows, each version sealed by the envelope under the vault's KEK and
  each row MACed in the HSM, written in one transaction (none of the per-write audit
  records); a fifth of them under a rotation policy, some due, overdue, failed, in grace;
* 200 principals of every kind (DAGs, Airflow users and roles, teams, viewers, an
  auditor) with their grants, through the vault's own API (audited, as usual);
* the trail: records written straight into chains 1 to 4 with executemany, each one
  chained by SHA-256 exactly as the vault chains it, the last of every batch sealed in the
  HSM, spread over 90 days: lookups by DAGs (``dag_id``, ``task_id`` in the context) that
  their grants decided, reads by people, listings, rotations, 3 % denials; then every
  chain's high-water mark is written at its head. ``audit verify`` passes on it.

Then each view is timed through ``vault.insight`` (each call is a real audited operation:
its own record and commit are in the time), median and slowest of ``-n`` calls, and the
access review once. ``--json`` prints the raw figures.

Run: ``.venv/bin/python benchmarks/console.py [--secrets 10000] [--records 1000000] [-n 5]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import Bench, new_vault, pg_database, pg_table_bytes, scratch
from _setup import fill_audit as setup_fill_audit
from _setup import make_settings as bench_settings
from sqlalchemy import Table, insert, select

from airflow_provider_mlsecrets.audit import mark as hsm_mark
from airflow_provider_mlsecrets.audit.log import CHAINS
from airflow_provider_mlsecrets.audit.record import Entry, canonical_context, format_ts, next_hash
from airflow_provider_mlsecrets.crypto.envelope import Binding
from airflow_provider_mlsecrets.keys import KekId, MacKey
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.service._integrity import seal_secret
from airflow_provider_mlsecrets.service.audit import AuditFilter
from airflow_provider_mlsecrets.service.keys import current_kek
from airflow_provider_mlsecrets.store.models import (
    AuditHead,
    AuditRecord,
    Rotation,
    RotationStep,
    Secret,
    SecretVersion,
    VersionState,
)

DAYS = 90
TEAMS = ("alpha", "beta", "gamma", "delta")
FOLDERS = ("connections", "variables", "ml/models", "ml/features", "services")


def secret_paths(n: int) -> list[str]:
    """Half under the teams' namespaces, half global, in a few folders each."""
    out = []
    for i in range(n):
        folder = FOLDERS[i % len(FOLDERS)]
        out.append(f"teams/{TEAMS[i // 2 % len(TEAMS)]}/{folder}/s{i:05d}" if i % 2
                   else f"{folder}/s{i:05d}")
    return out


def fill_secrets(bench: Bench, paths: list[str]) -> None:
    """Real secrets: each version sealed under the current KEK, each row MACed."""
    vault, keys = bench.vault, bench.vault.core.keys
    rng = random.Random(1)
    now = datetime.now(timezone.utc)
    with vault.core.transaction() as session:
        vault_id = vault.core.vault_id(session)
        kek = KekId(current_kek(session).label)
        for i, path in enumerate(paths):
            made = now - timedelta(days=rng.uniform(0, 400))
            policy = None
            if i % 5 == 0:
                policy = RotationPolicy(schedule=rng.choice(("30d", "90d", "0 3 * * 1")),
                                        rotator="random").to_json()
            secret = Secret(path=path, description=f"bench secret {i}",
                            owner=f"team-{TEAMS[i % 4]}", tags="{}", rotation=policy,
                            latest_version=1, current_version=1, created_at=made,
                            updated_at=made)
            session.add(secret)
            session.flush()
            sealed = vault.secrets.envelope.seal(f"value-{i}".encode(),
                                                 Binding(vault_id=vault_id, path=path,
                                                         version=1), kek)
            session.add(SecretVersion(
                secret_id=secret.id, version=1, state=VersionState.CURRENT.value,
                format_version=sealed.format_version, kek_id=sealed.kek_id,
                wrapped_key=sealed.wrapped_key, nonce=sealed.nonce,
                ciphertext=sealed.ciphertext, created_by="bench", created_at=made))
            seal_secret(keys, vault_id, secret)
            if policy is not None:
                due = now + timedelta(days=rng.uniform(-5, 60))
                failed = i % 45 == 0
                session.add(Rotation(
                    secret_id=secret.id, next_due_at=due, step=RotationStep.IDLE.value,
                    failures=1 if failed else 0, rotations=3,
                    last_result="failed" if failed else "rotated",
                    last_error="RotationFailed: the service refused the new value"
                    if failed else None,
                    invalidate_after=now + timedelta(hours=1) if i % 35 == 0 else None))
            if i % 2000 == 1999:
                session.flush()


@dataclasses.dataclass
class Who:
    name: str
    role: str
    grants: list[tuple[str, str]]  # (pattern, capability)
    dag: str | None = None


def principals(n: int = 200) -> list[Who]:
    out = [Who("auditor", "auditor", []), Who("airflow-role:op", "viewer",
                                              [("connections/**", "list")])]
    out += [Who(f"team:{t}", "pipeline", [(f"teams/{t}/**", "inject")]) for t in TEAMS]
    for i in range(n - len(out)):
        team = TEAMS[i % 4]
        if i % 4 == 3:
            out.append(Who(f"airflow-user:person{i}", "viewer", [(f"teams/{team}/**", "list")]))
        else:
            folder = FOLDERS[i % len(FOLDERS)]
            out.append(Who(f"dag:pipeline_{i}", "pipeline",
                           [(f"teams/{team}/{folder}/**", "inject"), (f"{folder}/**", "inject"),
                            ("services/unused/**", "inject")], dag=f"pipeline_{i}"))
    return out


def make_principals(bench: Bench, who: list[Who]) -> None:
    access, admin = bench.vault.access, bench.admin
    for w in who:
        access.create_principal(admin, w.name, w.role)
        for pattern, cap in w.grants:
            access.grant(admin, w.name, pattern, [cap])


def fill_audit(bench: Bench, records: int, paths: list[str], who: list[Who],
               batch: int = 20_000) -> None:
    """``records`` records over the last 90 days, chained over the four chains."""
    vault, keys = bench.vault, bench.vault.core.keys
    rng = random.Random(2)
    table = cast(Table, AuditRecord.__table__)
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        by_folder.setdefault(path.rsplit("/", 1)[0], []).append(path)
    dags = [w for w in who if w.dag]
    people = [w for w in who if w.role == "viewer"]
    start = datetime.now(timezone.utc) - timedelta(days=DAYS)
    step = timedelta(days=DAYS) / max(records, 1)
    with vault.core.transaction() as session:
        vault_id = vault.core.vault_id(session)
        heads = {h.chain: h for h in session.scalars(select(AuditHead).with_for_update())}
        state = {c: (h.seq, h.hash) for c, h in heads.items()}
        connection = session.connection()
        rows: dict[int, list[dict[str, Any]]] = {c: [] for c in range(1, CHAINS + 1)}
        for i in range(records):
            ts = format_ts(start + step * i)
            chain = 1 + i % CHAINS
            entry = _entry(rng, i, ts, dags, people, by_folder, paths)
            seq, previous = state[chain]
            seq += 1
            digest = next_hash(previous, chain, seq, entry)
            state[chain] = (seq, digest)
            pending = rows[chain]
            last = len(pending) == batch // CHAINS - 1 or i >= records - CHAINS
            pending.append({**entry.__dict__, "chain": chain, "seq": seq, "hash": digest,
                            "seal": keys.mac(MacKey.AUDIT, digest) if last else None})
            if last:
                connection.execute(insert(table), pending)
                rows[chain] = []
        for chain, (seq, digest) in state.items():
            heads[chain].seq, heads[chain].hash = seq, digest
    at = format_ts(datetime.now(timezone.utc))
    for chain, (seq, digest) in state.items():  # as a verification would leave them
        previous = hsm_mark.read(keys, vault_id, chain)
        hsm_mark.write(keys, vault_id, chain, seq, digest, at, previous)


def _entry(rng: random.Random, i: int, ts: str, dags: list[Who], people: list[Who],
           by_folder: dict[str, list[str]], paths: list[str]) -> Entry:
    roll = rng.random()
    context: dict[str, Any] = {"component": "cli", "host": "bench", "pid": 4242}
    if roll < 0.86:  # a task's lookup
        w = dags[(i // 7) % len(dags)]
        pattern = w.grants[rng.random() < 0.5][0]
        folder = pattern[:-3]
        found = [p for f, ps in by_folder.items() if f == folder for p in ps] or paths
        path = found[rng.randrange(len(found))]
        context = {"component": "task", "dag_id": w.dag, "task_id": f"t{i % 5}",
                   "run_id": f"scheduled__{ts[:13]}", "try_number": 1, "map_index": -1}
        denied = rng.random() < 0.03
        return Entry(ts=ts, principal=w.name, roles="pipeline", action="secret.inject",
                     path=path, version=1, outcome="denied" if denied else "allowed",
                     reason=(f"no grant of inject covers {path}" if denied
                             else f"grant of inject on {pattern}"),
                     request_id=str(uuid.uuid4()), context=canonical_context(context))
    if roll < 0.96:  # people listing
        w = people[i % len(people)]
        return Entry(ts=ts, principal=w.name, roles="viewer", action="secret.list",
                     path="", version=None, outcome="allowed", reason="authenticated; 40 shown",
                     request_id=str(uuid.uuid4()), context=canonical_context(context))
    if roll < 0.965:  # a security engineer reads a value
        path = paths[rng.randrange(len(paths))]
        return Entry(ts=ts, principal="admin", roles="security_engineer", action="secret.read",
                     path=path, version=1, outcome="allowed",
                     reason="role security_engineer", request_id=str(uuid.uuid4()),
                     context=canonical_context(context))
    path = paths[5 * rng.randrange(len(paths) // 5)]  # one under a rotation policy
    action = rng.choice(("rotation.begin", "rotation.create", "rotation.set", "rotation.test",
                         "rotation.finish"))
    return Entry(ts=ts, principal="rotator", roles="rotator", action=action, path=path,
                 version=2, outcome="allowed", reason="grant of rotate on **",
                 request_id=str(uuid.uuid4()), context=canonical_context(
                     {"component": "task", "dag_id": "mlsecrets_rotation",
                      "task_id": "rotate", "run_id": f"scheduled__{ts[:13]}",
                      "try_number": 1, "map_index": 0}))


def time_views(bench: Bench, paths: list[str], n: int) -> dict[str, Any]:
    insight, admin = bench.vault.insight, bench.admin
    viewer = Caller(bench.vault.access.create_principal(admin, "bench-viewer", "viewer"))
    bench.vault.access.grant(admin, "bench-viewer", "teams/alpha/**", ["list"])
    now = datetime.now(timezone.utc)
    middle = insight.audit(admin, AuditFilter(until=now - timedelta(days=DAYS / 2)),
                           limit=1).items[0]
    busy = "dag:pipeline_0"
    views: dict[str, Callable[[], object]] = {
        "inventory, page 1 (engineer)": lambda: insight.inventory(admin),
        "inventory, page 1 (viewer of one team)": lambda: insight.inventory(viewer),
        "inventory, search": lambda: insight.inventory(admin, search="s0123"),
        "inventory, one team, oldest first": lambda: insight.inventory(
            admin, team="beta", sort="age"),
        "inventory, overdue": lambda: insight.inventory(admin, state="overdue"),
        "secret page": lambda: insight.secret(admin, paths[10]),
        "principals (90 days)": lambda: insight.principals(admin),
        "principal page (a busy DAG)": lambda: insight.principal(admin, busy),
        "rotation": lambda: insight.rotation(admin),
        "audit, newest page": lambda: insight.audit(admin, AuditFilter()),
        "audit, a page 45 days back": lambda: insight.audit(
            admin, AuditFilter(), before=(middle.chain, middle.seq)),
        "audit, denials": lambda: insight.audit(admin, AuditFilter(outcome="denied")),
        "audit, one principal": lambda: insight.audit(admin, AuditFilter(principal=busy)),
        "audit, one DAG": lambda: insight.audit(admin, AuditFilter(), dag_id="pipeline_7"),
        "audit, a path prefix": lambda: insight.audit(
            admin, AuditFilter(path_prefix="teams/alpha/")),
        "audit, a path prefix with few records": lambda: insight.audit(
            admin, AuditFilter(path_prefix=paths[1])),
        "audit, a path prefix with none": lambda: insight.audit(
            admin, AuditFilter(path_prefix="nowhere/")),
        "audit health": lambda: insight.audit_health(admin),
        "keys": lambda: insight.keys(admin),
        "activity, 24 h by hour": lambda: insight.activity(
            admin, since=now - timedelta(hours=24)),
        "activity, 90 d by day": lambda: insight.activity(
            admin, since=now - timedelta(days=DAYS), bucket="day"),
        "DAG reach, 7 d": lambda: insight.reach_graph(admin, since=now - timedelta(days=7)),
        "DAG reach, 90 d": lambda: insight.reach_graph(admin, since=now - timedelta(days=DAYS)),
        "age against policy": lambda: insight.age_against_policy(admin),
    }
    out: dict[str, Any] = {}
    for name, call in views.items():
        call()  # warm the caches this process keeps (a console's server keeps them too)
        samples = []
        for _ in range(n):
            begin = time.perf_counter()
            call()
            samples.append(time.perf_counter() - begin)
        samples.sort()
        out[name] = {"median_ms": samples[len(samples) // 2] * 1e3,
                     "max_ms": samples[-1] * 1e3}
    begin = time.perf_counter()
    made = insight.review(admin, window=f"{DAYS}d")
    out["access review, 90 d"] = {"median_ms": (time.perf_counter() - begin) * 1e3,
                                  "max_ms": (time.perf_counter() - begin) * 1e3,
                                  "bytes": {k: len(v) for k, v in made.files.items()}}
    return out


def index_cost(home: Path, db_url: str | None, key_prefix: str, n: int, sample: int,
               size: Callable[[str], int]) -> dict[str, Any]:
    """What migration 0006's indexes cost the trail: single durable appends on a vault at
    0006 and one taken back to 0005, interleaved so both see the same noise, and bytes per
    record (table and indexes) over ``sample`` lookup records written to each."""
    from alembic import command

    from airflow_provider_mlsecrets.audit import log as audit_log
    from airflow_provider_mlsecrets.store.migrate import _config

    benches = {}
    for revision in ("0006", "0005"):
        url = db_url or f"sqlite:///{home / f'index-{revision}.db'}"
        if db_url:
            url = _fresh_schema(db_url, revision)
        bench = new_vault(home, url, key_prefix=f"{key_prefix}{revision}")
        if revision == "0005":
            command.downgrade(_config(bench.vault.core.engine), "0005")
        benches[revision] = bench
    samples: dict[str, list[float]] = {r: [] for r in benches}

    def append(bench: Bench) -> None:
        with bench.vault.core.transaction() as session:
            audit_log.append(session, bench.vault.core.keys, Entry(
                ts=format_ts(datetime.now(timezone.utc)), principal="dag:train",
                roles="pipeline", action="secret.inject", path="connections/warehouse",
                version=1, outcome="allowed", reason="grant of inject on connections/**",
                request_id=str(uuid.uuid4()), context=canonical_context(
                    {"component": "task", "dag_id": "train", "task_id": "fetch"})),
                bench.vault.core.vault_id(session))

    for _ in range(n):
        for revision, bench in benches.items():
            begin = time.perf_counter()
            append(bench)
            samples[revision].append(time.perf_counter() - begin)
    out: dict[str, Any] = {}
    for revision, bench in benches.items():
        url = bench.settings.db_url
        before = size(url)
        setup_fill_audit(bench.vault, sample, seal_all=True)
        ordered = sorted(samples[revision])
        out[revision] = {"append_median_us": ordered[len(ordered) // 2] * 1e6,
                         "append_p99_us": ordered[int(len(ordered) * 0.99)] * 1e6,
                         "bytes_per_record": (size(url) - before) / sample}
    return out


def _fresh_schema(server_url: str, name: str) -> str:
    from sqlalchemy import text

    from airflow_provider_mlsecrets.store.engine import engine_for

    schema = f"rev_{name}"
    with engine_for(server_url).begin() as connection:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    return f"{server_url}?options=-csearch_path%3D{schema}"


def sqlite_bytes(url: str) -> int:
    import sqlite3

    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return Path(path).stat().st_size


def build(home: Path, db_url: str | None, secrets: int, records: int, key_prefix: str
          ) -> tuple[Bench, list[str], dict[str, float]]:
    settings = dataclasses.replace(bench_settings(home, db_url, key_prefix=key_prefix),
                                   audit_mark_interval=86_400)
    vault = Vault(settings)
    token = vault.initialise().admin_token
    assert token is not None
    bench = Bench(vault=vault, admin=Caller(token), settings=settings)
    paths = secret_paths(secrets)
    who = principals()
    took: dict[str, float] = {}
    begin = time.perf_counter()
    fill_secrets(bench, paths)
    took["secrets_s"] = time.perf_counter() - begin
    begin = time.perf_counter()
    make_principals(bench, who)
    took["principals_s"] = time.perf_counter() - begin
    begin = time.perf_counter()
    fill_audit(bench, records, paths, who)
    took["audit_s"] = time.perf_counter() - begin
    if db_url is not None:
        # what autovacuum does on its own after a load this size (within a minute or so);
        # SQLite gets no statistics, as in production, where nothing runs ANALYZE
        from sqlalchemy import text

        with vault.core.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT").execute(
                text("ANALYZE"))
    return bench, paths, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--secrets", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("-n", type=int, default=5, help="timed calls per view")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--index-cost", action="store_true",
                        help="only measure what migration 0006's indexes cost appends and "
                             "storage")
    args = parser.parse_args()
    base = scratch("mlsecrets-console-")
    results: dict[str, Any] = {}
    if args.index_cost:
        results["sqlite"] = index_cost(base, None, "ix", 300, 20_000, sqlite_bytes)
        if not args.no_postgres:
            with pg_database() as url:
                if url is not None:
                    results["postgres"] = index_cost(
                        base, url, "pgix", 300, 20_000,
                        lambda u: pg_table_bytes(u))
        print(json.dumps(results, indent=2))
        return
    bench, paths, took = build(base, None, args.secrets, args.records, "mlsecrets")
    results["sqlite"] = {"built": took, "views": time_views(bench, paths, args.n),
                         "bytes": (base / "vault.db").stat().st_size}
    if not args.no_postgres:
        with pg_database() as url:
            if url is None:
                results["postgres"] = {"skipped": "PostgreSQL at 127.0.0.1:5432 is unreachable"}
            else:
                bench, paths, took = build(base, url, args.secrets, args.records, "pgbench")
                results["postgres"] = {"built": took, "views": time_views(bench, paths, args.n),
                                       "bytes": pg_table_bytes(url)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"console views on {args.secrets:,} secrets and {args.records:,} audit records "
          f"(median and slowest of {args.n} calls, each an audited operation)")
    names = list(results["sqlite"]["views"])
    dbs = [d for d in results if "views" in results[d]]
    print(f"{'view':<42}" + "".join(f"{d + ' median':>18}{'max':>10}" for d in dbs))
    for name in names:
        print(f"{name:<42}" + "".join(
            f"{results[d]['views'][name]['median_ms']:>16.1f}ms"
            f"{results[d]['views'][name]['max_ms']:>8.1f}ms" for d in dbs))
    for d in dbs:
        t = results[d]["built"]
        print(f"{d}: built in {t['secrets_s']:.0f} s (secrets) + {t['principals_s']:.0f} s "
              f"(principals) + {t['audit_s']:.0f} s (trail); audit table "
              f"{results[d]['bytes'] / 2**20:,.0f} MiB")


if __name__ == "__main__":
    main()
