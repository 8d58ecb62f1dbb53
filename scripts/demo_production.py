"""The last step of ``scripts/demo`` (and all of ``scripts/demo --production``): the
production layout of docs/service.md on real processes, narrated for a newcomer.

It runs the code tests/e2e/test_production_layout.py runs (tests/e2e/production.py): the
Airflow API server with the plugin holds the vault; the scheduler, its LocalExecutor's task
processes and the dag-processor hold only the service's address; Airflow's metadata database
and the vault's are fresh PostgreSQL databases (SQLite files when no server answers). Every
DAG is triggered through Airflow's REST API; then it shows each run, what the tasks proved,
the vault's audit records of the task identities, the alerts the API server's vault sent to
a local HTTP receiver through Airflow's HttpNotifier, and where the stored values are not.

Run it from the repository's root: ``.venv/bin/python -m scripts.demo_production DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from airflow_provider_mlsecrets.service.audit import AuditFilter
from tests.e2e.production import (
    ENGINEER,
    FOLLOWER,
    ROTATED,
    ROTATOR,
    LayoutError,
    Production,
    found,
    production_layout,
    run_all,
    scan_database,
)
from tests.receivers import Inbox, http_receiver

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def say(line: str = "") -> None:
    print(line, flush=True)


def postgres(url: str) -> str | None:
    """``url`` if a PostgreSQL server answers there, else None (and why, said)."""
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return url
    except Exception as exc:  # any failure to connect means the same thing here
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        say(f"PostgreSQL does not answer at {url} ({reason}).")
        say("So Airflow's metadata database and the vault's are SQLite files here: the same "
            "processes, but Airflow\nsupports SQLite for development only. For the real "
            "thing start PostgreSQL on 127.0.0.1:5432\n(trust auth for 'postgres' on "
            "localhost) or set MLSECRETS_DEMO_DATABASE_URL, and run scripts/demo --production.")
        return None
    finally:
        engine.dispose()


def show_processes(prod: Production) -> None:
    say("\nWhich process holds what (the MLSECRETS_* settings each was started with):")
    for name, settings in prod.process_settings().items():
        shown = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
        say(f"  {name:<14} {shown}")
    vault_home = prod.cluster.vault.settings.home
    say(f"  The API server's MLSECRETS_HOME ({vault_home}) holds config.json: the PKCS#11 "
        "module, the PIN file\n  and the vault's database URL. The others have the "
        "service's address, where the rotation DAG publishes\n  audit checkpoints, and an "
        f"empty MLSECRETS_HOME ({prod.worker_home.name}/): no PIN, no HSM module, no "
        "database,\n  no token. The LocalExecutor's task processes are the scheduler's "
        "children and inherit its settings.")


def show_runs(prod: Production) -> bool:
    say("\nDAG runs, triggered through Airflow's REST API (a JWT from POST /auth/token, then "
        "POST /api/v2/dags/DAG_ID/dagRuns),\nand read back through it:")
    try:
        done = run_all(prod)
    except LayoutError as exc:
        say(f"  {exc}")
        return False
    ok = True
    listed = [("mlsecrets_rotation", r) for r in done.rotation]
    listed += [(d, r) for d, r in done.ids.items() if d != "mlsecrets_rotation"]
    kinds = {r["dag_run_id"]: r["run_type"] for d in {d for d, _ in listed}
             for r in prod.runs(d)}
    for dag_id, run_id in listed:
        state = prod.run_state(dag_id, run_id)
        tasks = " ".join(f"{t}={s}" for t, s in prod.task_states(dag_id, run_id).items())
        say(f"  {dag_id:<30} {kinds[run_id]:<16} {state:<8} {tasks}")
        if state != "success":
            ok = False
            for log in sorted((prod.cluster.home / "logs" / f"dag_id={dag_id}" /
                               f"run_id={run_id}").rglob("*.log")):
                say(f"    {log.relative_to(prod.base)}:")
                for error in errors(log):
                    say(f"      {error}")
    # the rotated secret's new value must appear nowhere either
    prod.canaries["signing-key (rotated)"] = prod.cluster.vault.secrets.read(
        prod.cluster.admin, ROTATED, reason="in a test").decode()  # an audited read
    if ok:
        show_proofs(prod, done.ids)
    return ok


def errors(log: Path) -> list[str]:
    """The error lines of a task log (JSON lines), with the exception they carry."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("level") == "error":
            details = [f"{d.get('exc_type')}: {d.get('exc_value')}"
                       for d in event.get("error_detail") or ()]
            out.append(" ".join([str(event.get("event")), *details]))
    return out


def show_proofs(prod: Production, ids: dict[str, str]) -> None:
    vault, admin = prod.cluster.vault, prod.cluster.admin

    def matches(proof: dict[str, str], value: str) -> bool:
        return proof["sha256"] == hashlib.sha256((proof["salt"] + value).encode()).hexdigest()

    new_value = prod.canaries["signing-key (rotated)"]
    told = prod.xcom("mlsecrets_training_callable", ids["mlsecrets_training_callable"], "train")
    proof = json.loads((prod.proof_dir / "proof.json").read_text())
    followed = prod.xcom(FOLLOWER, ids[FOLLOWER], "reconnect")
    say("\nWhat the tasks proved, without showing a value (salted hashes checked here "
        "against the vault):")
    say("  mlsecrets_example_training (command mode): OPENAI_API_KEY "
        + str(matches({"salt": proof["salt"], "sha256": proof["sha256"]["OPENAI_API_KEY"]},
                      prod.canaries["api-key"])).lower() + ", DB_PASSWORD "
        + str(matches({"salt": proof["salt"], "sha256": proof["sha256"]["DB_PASSWORD"]},
                      prod.canaries["db-password"])).lower())
    say(f"  mlsecrets_training_callable (a callable that prints): api key "
        f"{str(matches(told['api_key'], prod.canaries['api-key'])).lower()}, "
        f"db password {str(matches(told['db_password'], prod.canaries['db-password'])).lower()}"
        "; its print reads, in the task log:")
    log = next((prod.cluster.home / "logs" / "dag_id=mlsecrets_training_callable").rglob(
        "*.log")).read_text(errors="replace")
    say("    " + next((json.loads(line)["event"] for line in log.splitlines()
                       if "training with" in line), "(not found)"))
    say(f"  {FOLLOWER} (scheduled on secret_asset({ROTATED!r})): ran on the rotation's "
        f"event {followed['uris']} version(s) {followed['versions']}; it read the new value: "
        f"{str(matches(followed, new_value)).lower()}")
    versions = ", ".join(f"v{v.version} {v.state}" for v in vault.secrets.versions(admin, ROTATED))
    say(f"  {ROTATED} in the vault: {versions}")


def show_audit(prod: Production) -> None:
    say("\nThe vault's audit records of the task identities (written by the API server):")
    say(f"  {'principal':<34} {'action':<16} {'path':<38} {'outcome':<8} who asked")
    hooks = 0
    for r in prod.cluster.vault.audit.tail(prod.cluster.admin, 400):
        if r.principal.startswith("dag:"):
            if r.outcome == "not_found" and r.path.startswith("connections/mlsecrets_"):
                hooks += 1
                continue
            who = f"task {r.caller}, verified by the Execution API"
        elif r.principal == ROTATOR and r.action in ("rotation.due", "rotation.finish",
                                                     "audit.checkpoint"):
            who = (f"task {r.context.get('claimed_dag_id')}.{r.context.get('claimed_task_id')}"
                   " (as it says), with the rotator's token, through the service")
        else:
            continue
        say(f"  {r.principal:<34} {r.action:<16} {r.path or '-':<38} {r.outcome:<8} {who}")
    say(f"  (and {hooks} lookups of a hook's own connection, mlsecrets_default, "
        "mlsecrets_rotation or mlsecrets_maintenance:\n  not_found in the vault, so Airflow "
        "looked in its own metastore next)")


def show_alerts(prod: Production, inbox: Inbox) -> None:
    """A person's plaintext read through the service, then every alert the receiver got."""
    read = prod.read_as_engineer("ml/openai/api_key", "demo: checking the trainer's key")
    say(f"\n{ENGINEER} (a security engineer, over MLSECRETS_URL) read ml/openai/api_key with "
        f"a reason: exit {read.returncode}.")
    want = prod.cluster.vault.audit.tail(prod.cluster.admin, 1, AuditFilter(
        principal=ENGINEER, action="secret.read"))
    seqs = {(r.chain, r.seq) for r in want}
    with contextlib.suppress(LayoutError):
        prod.wait("its alert", lambda: any((b["audit_record"]["chain"], b["audit_record"]["seq"])
                                           in seqs for b in inbox.json()), timeout=60)
    say("Alerts the API server's vault delivered (Airflow's HttpNotifier, connection "
        "siem_alerts) to the HTTP receiver:")
    for body in inbox.json():
        record = body["audit_record"]
        say(f"  #{body['alert_id']:<3} {body['rule']:<15} {body['principal']:<34} "
            f"{body['path']:<38} audit record {record['chain']}/{record['seq']}")


def show_no_leaks(prod: Production, inbox: Inbox) -> bool:
    needles = prod.needles()
    files = prod.files()
    files.update({f"alert {i} received": body.decode(errors="replace")
                  for i, body in enumerate(inbox.bodies)})
    in_files = {path: got for path, content in files.items() if (got := found(needles, content))}
    airflow = scan_database(prod.databases["airflow"], needles)
    vault = scan_database(prod.databases["vault"], needles)
    say(f"\nSearched for the {len(prod.canaries)} stored values and tokens (and their base64) "
        f"in {len(files)} files and alerts (every task log,\nthe three consoles, the "
        "scheduler's included, the proof, each alert received), in every column of "
        f"Airflow's\n{len(airflow.rows)} tables (XCom and rendered fields among them) and of "
        f"the vault's {len(vault.rows)} tables:")
    leaks = {**in_files, **{f"Airflow table {t}": v for t, v in airflow.hits.items()},
             **{f"vault table {t}": v for t, v in vault.hits.items()}}
    for where, what in leaks.items():
        say(f"  LEAK: {', '.join(what)} in {where}")
    if not leaks:
        say("  found nowhere.")
    made = sorted(p.name for p in prod.worker_home.iterdir())
    say(f"The workers' MLSECRETS_HOME holds {made or 'nothing'}: no vault was made on a worker.")
    return not leaks and not made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="a new directory for the layout's files")
    args = parser.parse_args()
    base: Path = args.base
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    os.environ["AIRFLOW_HOME"] = str(base / "airflow")  # never ~/airflow, should Airflow load
    server = postgres(os.environ.get("MLSECRETS_DEMO_DATABASE_URL") or
                      os.environ.get("MLSECRETS_TEST_DATABASE_URL") or DEFAULT_SERVER)
    with http_receiver() as inbox, production_layout(
            base, server, say=lambda line: say(f"  {line}"),
            alert_receiver=f"http://127.0.0.1:{inbox.port}") as prod:
        show_processes(prod)
        ok = show_runs(prod)
        show_audit(prod)
        show_alerts(prod, inbox)
        ok = show_no_leaks(prod, inbox) and ok
        say("\nStopping the processes" + (" and dropping the databases" if server else ""))
    say(f"Their logs stay in {base} (api-server.log, scheduler.log, dag-processor.log, "
        "airflow/logs/).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
