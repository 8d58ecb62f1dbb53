"""What ``MLSecretsBackend`` adds to a process's resident memory: a fresh interpreter imports
Airflow (``airflow``, ``Connection`` and the ``MetastoreBackend`` secrets machinery), then
imports and instantiates ``MLSecretsBackend`` and makes one ``get_connection`` lookup (vault
service, SQLAlchemy engine, python-pkcs11 with SoftHSM2 logged in). VmRSS from
``/proc/self/status`` after each step; goal: the backend adds at most 15 MiB.

Building the first ``Connection`` object makes Airflow import all its ORM models, whichever
backend found it, so a second process first looks a connection up through Airflow's own
``EnvironmentVariablesBackend`` and only then through ours: the first figure is the whole
step, the second what is the backend's own.

Run: ``.venv/bin/python benchmarks/memory.py [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _setup import scratch, vault_with_connection

GOAL_MIB = 15.0
URI = "postgresql://trainer:bench-pa55word@warehouse.internal:5432/features"
CHILD = """
import json, sys

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

import airflow
from airflow.models.connection import Connection
from airflow.secrets.metastore import MetastoreBackend
out = {"airflow": rss()}
if sys.argv[2] == "env-first":
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend
    assert EnvironmentVariablesBackend().get_connection("env_db").password == "bench-pa55word"
    out["airflow_lookup"] = rss()
from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend
backend = MLSecretsBackend(token_file=sys.argv[1])
out["import"] = rss()
conn = backend.get_connection("bench_db")
assert conn is not None and conn.password == "bench-pa55word"
out["lookup"] = rss()
print(json.dumps(out))
"""


def child(env: dict[str, str], token_file: Path, mode: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(token_file), mode], env=env,
                          text=True, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    return {k: v / 2**20 for k, v in rss.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = scratch("mlsecrets-memory-")
    _, token_file = vault_with_connection(base / "vault", "bench_db", URI)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLSECRETS_"))}
    env.update(AIRFLOW_HOME=str(base / "airflow"), MLSECRETS_HOME=str(base / "vault"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__UNIT_TEST_MODE="False",
               AIRFLOW_CONN_ENV_DB=URI)
    alone, after = child(env, token_file, "alone"), child(env, token_file, "env-first")
    whole, own = alone["lookup"] - alone["airflow"], after["lookup"] - after["airflow_lookup"]
    result = {"alone_mib": alone, "after_airflow_lookup_mib": after,
              "added_in_all_mib": whole, "added_by_backend_mib": own,
              "goal_mib": GOAL_MIB}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'resident size of a fresh process (VmRSS, MiB)':<52}{'ours first':>18}"
          f"{'Airflow first':>20}")
    rows = [("Airflow + Connection + MetastoreBackend imported", "airflow"),
            ("+ a lookup through EnvironmentVariablesBackend", "airflow_lookup"),
            ("+ MLSecretsBackend imported and instantiated", "import"),
            ("+ one MLSecretsBackend get_connection", "lookup")]
    for label, key in rows:
        first = f"{alone[key]:.1f}" if key in alone else "-"
        print(f"{label:<52}{first:>18}{after[key]:>20.1f}")
    print(f"MLSecretsBackend import + first lookup add {whole:.1f} MiB to a process that "
          f"imported Airflow; {own:.1f} MiB of it is the backend's own (Airflow's first "
          f"Connection costs {after['airflow_lookup'] - after['airflow']:.1f} MiB whatever the "
          f"backend). Goal <= {GOAL_MIB:g} MiB: {'met' if own <= GOAL_MIB else 'NOT met'} for "
          f"the backend's own part, {'met' if whole <= GOAL_MIB else 'NOT met'} in all.")


if __name__ == "__main__":
    main()
