"""Connection lookup from inside a running task, side by side on one machine: a DAG run
with ``dag.test()`` (the task runs in-process, talking to an in-process Execution API) whose
task calls ``Connection.get(conn_id)`` in a loop, for three paths, each with its own
connection id (the value is checked) and its own Airflow home and migrated SQLite database:

* env: ``AIRFLOW_CONN_BENCH_ENV``, the first backend a task asks;
* metastore: ``bench_meta`` in Airflow's database (Fernet), which a task reaches through the
  Execution API;
* mlsecrets: ``bench_vault`` from ``MLSecretsBackend`` as ``[workers] secrets_backend`` with
  a token file (HSM unwrap, AES-GCM, a durable HSM-sealed audit record, SQLite FULL).

Prints median and p99 per lookup and the ratio to the env path (goal: mlsecrets <= 1.3x).
Run: ``.venv/bin/python benchmarks/in_task.py [-n 300] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import scratch, vault_with_connection
from _stats import summary

from airflow_provider_mlsecrets.service.audit import AuditFilter

GOAL = 1.3
URI = "postgresql://trainer:bench-pa55word@warehouse.internal:5432/features"
BACKEND = "airflow_provider_mlsecrets.secrets.backend.MLSecretsBackend"
PATHS = {"env": "bench_env", "metastore": "bench_meta", "mlsecrets": "bench_vault"}
DAG_SCRIPT = """
import json, os, sys, time
from airflow.sdk import DAG, Connection, task

@task
def lookups():
    conn_id, n, warmup = os.environ["BENCH_CONN_ID"], int(os.environ["BENCH_N"]), int(
        os.environ["BENCH_WARMUP"])
    samples = []
    for _ in range(warmup + n):
        start = time.perf_counter()
        conn = Connection.get(conn_id)
        samples.append(time.perf_counter() - start)
        assert conn.password == "bench-pa55word", conn_id
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump(samples[warmup:], f)


with DAG("bench_in_task", schedule=None) as dag:
    lookups()

if __name__ == "__main__":  # not when Airflow parses this file for the run
    if os.environ["BENCH_CONN_ID"] == "bench_meta":  # into Airflow's database, Fernet
        from airflow.models.connection import Connection as Stored
        from airflow.utils.session import create_session
        with create_session() as session:
            session.add(Stored(conn_id="bench_meta", uri=os.environ["BENCH_URI"]))
    run = dag.test()
    sys.exit(0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1)
"""


def run_path(name: str, base: Path, env: dict[str, str], n: int, warmup: int) -> list[float]:
    home = base / name
    home.mkdir()
    env = {**env, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home)}
    migrated = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                              capture_output=True, text=True, check=False)
    if migrated.returncode != 0:
        raise SystemExit(migrated.stderr[-3000:])
    script, out = home / "bench_dag.py", home / "samples.json"
    script.write_text(DAG_SCRIPT)
    env.update(BENCH_CONN_ID=PATHS[name], BENCH_N=str(n), BENCH_WARMUP=str(warmup),
               BENCH_OUT=str(out))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"the {name} run failed:\n{(done.stdout + done.stderr)[-4000:]}")
    samples: list[float] = json.loads(out.read_text())
    return samples


def main() -> None:
    from cryptography.fernet import Fernet

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-n", type=int, default=300, help="timed lookups per path")
    parser.add_argument("--warmup", type=int, default=20, help="untimed lookups first")
    args = parser.parse_args()
    base = scratch("mlsecrets-in-task-")
    bench, token_file = vault_with_connection(base / "vault", PATHS["mlsecrets"], URI)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLSECRETS_"))}
    env.update(AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__UNIT_TEST_MODE="False",
               AIRFLOW__CORE__FERNET_KEY=Fernet.generate_key().decode(),
               AIRFLOW__API_AUTH__JWT_SECRET="bench-only-" + os.urandom(32).hex(),
               AIRFLOW_CONN_BENCH_ENV=URI, BENCH_URI=URI)
    ours = {"MLSECRETS_HOME": str(base / "vault"), "AIRFLOW__WORKERS__SECRETS_BACKEND": BACKEND,
            "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps(
                {"token_file": str(token_file)})}
    rows: dict[str, dict[str, Any]] = {}
    for name in PATHS:
        extra = ours if name == "mlsecrets" else {}
        rows[name] = summary(run_path(name, base, {**env, **extra}, args.n, args.warmup))
    # the mlsecrets path really was the backend inside the task: one audited inject each
    audited = [r for r in bench.vault.audit.export(bench.admin, AuditFilter(
        action="secret.inject", principal="bench")) if r.context.get("dag_id") == "bench_in_task"]
    assert len(audited) == args.warmup + args.n, len(audited)
    for row in rows.values():
        row["ratio_to_env"] = row["median_us"] / rows["env"]["median_us"]
    if args.json:
        print(json.dumps({"samples": args.n, "paths": rows, "goal_ratio": GOAL}, indent=2))
        return
    print(f"Connection.get inside a dag.test() task, {args.n} samples per path")
    print(f"{'path':<12}{'conn_id':<14}{'median':>10}{'p99':>12}{'x env':>9}")
    for name, row in rows.items():
        print(f"{name:<12}{PATHS[name]:<14}{row['median_us']:>8.0f}us{row['p99_us']:>10.0f}us"
              f"{row['ratio_to_env']:>8.2f}x")
    ratio = rows["mlsecrets"]["ratio_to_env"]
    print(f"mlsecrets / env = {ratio:.2f}x (goal <= {GOAL}x: "
          f"{'met' if ratio <= GOAL else 'NOT met'})")


if __name__ == "__main__":
    main()
