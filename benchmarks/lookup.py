"""Raw connection lookup, side by side in one process on one machine: ``MLSecretsBackend``
(HSM unwrap, AES-GCM, a durable HSM-sealed audit record per lookup, SQLite
``synchronous=FULL``) against Airflow's own ``MetastoreBackend`` (Fernet, SQLite),
``EnvironmentVariablesBackend`` and ``LocalFilesystemBackend``, for the same connection.

A last row moves the HSM's high-water mark of the audit trail after every lookup
(``MLSECRETS_AUDIT_MARK_INTERVAL=0``) instead of at most once a minute (the default, in the
row above it), to show what a mark costs and that the default keeps it off the median.

A second table puts the same lookup with the vault's metrics off and on side by side
(:func:`metrics_off_on`: Airflow's StatsD client sending to a real local UDP socket that
another process drains, as a StatsD daemon would), in interleaved rounds, with the ratio;
and what the metrics hook costs a vault operation when metrics are off.

A third puts it with the vault's alert evaluator off and on (:func:`alerts_off_on`: the
background thread of docs/alerts.md, woken after each commit), interleaved the same way.

Prints median and p99 per lookup and the ratio to the metastore; ``--json`` for machines.
Run: ``.venv/bin/python benchmarks/lookup.py [-n 300] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
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


_DRAIN = """
import socket, sys, threading
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
count = [0]
def drain():
    while True:
        sock.recv(65536)
        count[0] += 1
threading.Thread(target=drain, daemon=True).start()
for _ in sys.stdin:
    print(count[0], flush=True)
"""


def metrics_off_on(lookup: Callable[[], object], n: int,
                   rounds: int = 6) -> dict[str, dict[str, float]]:
    """The lookup with the vault's metrics off, then on (``[metrics] statsd_on`` to a bound
    UDP socket, drained by a thread as a StatsD daemon would), in ``rounds`` alternating
    blocks so that drift on a busy machine falls on both; the on/off ratio of the medians.
    Adds ``packets per lookup`` and the off-path cost of the hook (ns per call)."""
    from airflow_provider_mlsecrets import metrics

    # the StatsD daemon is another process, as in a deployment: a thread of this one would
    # take the interpreter lock at every packet and slow the lookups it measures
    drainer = subprocess.Popen([sys.executable, "-c", _DRAIN], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert drainer.stdin is not None and drainer.stdout is not None
    port = drainer.stdout.readline().strip()

    def received() -> int:
        assert drainer.stdin is not None and drainer.stdout is not None
        drainer.stdin.write("?\n")
        drainer.stdin.flush()
        return int(drainer.stdout.readline())

    on = {"AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
          "AIRFLOW__METRICS__STATSD_PORT": port}
    samples: dict[str, list[float]] = {"off": [], "on": []}
    per = max(1, n // rounds)
    counted = 0
    try:
        for _ in range(rounds):
            for state in ("off", "on"):
                if state == "on":
                    os.environ.update(on)
                else:
                    for key in on:
                        os.environ.pop(key, None)
                metrics.reset()
                assert metrics.wait(10) == (state == "on"), state
                before = received()
                samples[state] += timings(lookup, per, warmup=5)
                if state == "on":  # everything queued sent, then received, before counting
                    metrics.flush(10)
                    time.sleep(0.3)
                    counted += received() - before
        os.environ.update(on)
        metrics.reset()
        metrics.wait(10)
        emits = 2_000
        start = time.perf_counter()
        for _ in range(emits):  # what one lookup emits: the lookup, its inject, its record
            metrics.lookup("connection", "found", 0.001)
            metrics.operation("secret.inject", "allowed", 0.001)
            metrics.append(0.0001)
        on_us = (time.perf_counter() - start) / emits * 1e6
        for key in on:
            os.environ.pop(key, None)
        metrics.reset()
        metrics.wait(10)
        calls = 200_000
        start = time.perf_counter()
        for _ in range(calls):
            metrics.operation("secret.inject", "allowed", 0.001)
        off_ns = (time.perf_counter() - start) / calls * 1e9
    finally:
        drainer.kill()
        drainer.wait()
    rows = {f"metrics {state}": summary(values) for state, values in samples.items()}
    rows["metrics on"]["ratio_to_off"] = (rows["metrics on"]["median_us"]
                                          / rows["metrics off"]["median_us"])
    rows["metrics on"]["packets_per_lookup"] = counted / (per * rounds + 5 * rounds)
    rows["metrics off"]["hook_ns_when_off"] = off_ns
    rows["metrics on"]["emit_us_per_lookup"] = on_us
    return rows


def alerts_off_on(backend: object, n: int, rounds: int = 6) -> dict[str, dict[str, float]]:
    """The lookup with the vault's alert evaluator off, then on (docs/alerts.md: the
    background thread of the process that holds the vault, woken after each commit, passes at
    least a second apart, with the default rules), in ``rounds`` alternating rounds of
    ``n / rounds`` lookups, so drift hits both alike."""
    from airflow_provider_mlsecrets.alerts.runner import AlertRunner

    lookup = lambda: backend.get_connection("bench_db")  # type: ignore[attr-defined]  # noqa: E731
    vault = backend._get_vault()  # type: ignore[attr-defined]
    vault.alerts.run_pass()  # seeded: the trail so far raises nothing
    samples: dict[str, list[float]] = {"off": [], "on": []}
    passes, per = 0, max(n // rounds, 1)
    for _ in range(rounds):
        for state in ("off", "on"):
            runner = AlertRunner(lambda: vault) if state == "on" else None
            if runner is not None:
                runner.start()
            samples[state] += timings(lookup, per, warmup=5)
            if runner is not None:
                runner.stop()
                passes += runner.passes
    rows = {f"alerts {state}": summary(values) for state, values in samples.items()}
    rows["alerts on"]["ratio_to_off"] = rows["alerts on"]["median_us"] / rows[
        "alerts off"]["median_us"]
    rows["alerts on"]["passes"] = passes
    return rows


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
    del os.environ["MLSECRETS_AUDIT_MARK_INTERVAL"]
    measured = MLSecretsBackend(token_file=str(base / "bench.token"))
    observed = metrics_off_on(lambda: measured.get_connection("bench_db"), args.n)
    alerting = alerts_off_on(measured, args.n)
    metastore = rows["MetastoreBackend (Fernet, SQLite)"]["median_us"]
    for row in rows.values():
        row["ratio_to_metastore"] = row["median_us"] / metastore
    if args.json:
        print(json.dumps({"samples": args.n, "backends": rows, "metrics": observed,
                          "alerts": alerting},
                         indent=2))
        return
    print(f"connection lookup, {args.n} samples each (same process, same connection)")
    print(f"{'backend':<46}{'median':>12}{'p99':>12}{'x metastore':>13}")
    for name, row in rows.items():
        print(f"{name:<46}{row['median_us']:>10.0f}us{row['p99_us']:>10.0f}us"
              f"{row['ratio_to_metastore']:>12.2f}x")
    off, on = observed["metrics off"], observed["metrics on"]
    print(f"\nMLSecretsBackend, vault metrics off and on (StatsD to a local UDP socket, "
          f"{args.n} samples each, interleaved)")
    print(f"{'metrics':<46}{'median':>12}{'p99':>12}{'x off':>13}")
    print(f"{'off':<46}{off['median_us']:>10.0f}us{off['p99_us']:>10.0f}us{1.0:>12.2f}x")
    label = f"on (StatsD, {on['packets_per_lookup']:.1f} packets per lookup)"
    print(f"{label:<46}"
          f"{on['median_us']:>10.0f}us{on['p99_us']:>10.0f}us{on['ratio_to_off']:>12.2f}x")
    print(f"the metrics hook with metrics off: {off['hook_ns_when_off']:.0f} ns per vault "
          f"operation; on: {on['emit_us_per_lookup']:.0f} us of emitting per lookup")
    off, on = alerting["alerts off"], alerting["alerts on"]
    print(f"\nMLSecretsBackend, the vault's alert evaluator off and on (its background thread, "
          f"default rules, {on['passes']:.0f} passes; interleaved)")
    print(f"{'alerts':<46}{'median':>12}{'p99':>12}{'x off':>13}")
    print(f"{'off':<46}{off['median_us']:>10.0f}us{off['p99_us']:>10.0f}us{1.0:>12.2f}x")
    print(f"{'on':<46}{on['median_us']:>10.0f}us{on['p99_us']:>10.0f}us"
          f"{on['ratio_to_off']:>12.2f}x")


if __name__ == "__main__":
    main()
