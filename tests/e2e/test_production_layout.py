"""The production layout end to end (issue 15; docs/service.md, "The production layout"):
a real API server with the plugin (the only process with the vault), scheduler,
dag-processor and LocalExecutor, Airflow's metadata database and the vault's on PostgreSQL,
DAGs triggered and read through Airflow's REST API (tests/e2e/production.py).

Every DAG of example_dags/ succeeds on workers that hold no vault setting but the service's
address: the connections DAG, training with the command mode and with a callable that prints
(tests/dags/mlsecrets_production.py), the rotation DAG through the service, and a DAG
scheduled on ``secret_asset(...)`` that reads its triggering event. Each DAG acts as its own
``dag:`` principal, the rotation as its ``rotator``; then no stored value appears in any task
log, process console, XCom, rendered field or table of either database.

Alerts (issue 17, docs/alerts.md): the API server's vault delivers them through Airflow's
``HttpNotifier`` to a real HTTP receiver started here; a person's plaintext read through the
service and each DAG's first reach of each secret arrive there once each, naming who, what,
when and the audit record, and no value or token arrives in any body. The maintenance DAG
asks the service for a pass from a worker that holds no vault.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from airflow_provider_mlsecrets.audit.publish import read_checkpoint
from airflow_provider_mlsecrets.service.audit import AuditFilter, AuditView
from airflow_provider_mlsecrets.store.models import Alert
from tests.conftest import require_postgres
from tests.e2e.production import (
    DAGS,
    ENGINEER,
    FOLLOWER,
    GRANTS,
    MAINTAINER,
    MAINTENANCE,
    NOTIFIER,
    ROTATED,
    ROTATOR,
    TRIGGERED,
    Production,
    Runs,
    found,
    production_layout,
    run_all,
    scan_database,
)
from tests.receivers import Inbox, http_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def inbox() -> Iterator[Inbox]:
    """The alerts' receiver: a real HTTP server on a free port of 127.0.0.1."""
    with http_receiver() as got:
        yield got


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, inbox: Inbox) -> Iterator[Production]:
    with production_layout(tmp_path_factory.mktemp("production"), require_postgres(),
                           alert_receiver=f"http://127.0.0.1:{inbox.port}") as prod:
        yield prod


@pytest.fixture(scope="module")
def all_runs(production: Production) -> Runs:
    done = run_all(production)
    # the rotated secret's new value must appear nowhere either
    production.canaries["signing-key-v2"] = production.cluster.vault.secrets.read(
        production.cluster.admin, ROTATED, reason="in a test").decode()
    return done


@pytest.fixture
def runs(all_runs: Runs) -> dict[str, str]:
    return all_runs.ids


def salted(proof: dict[str, str], value: str) -> bool:
    return proof["sha256"] == hashlib.sha256((proof["salt"] + value).encode()).hexdigest()


def test_only_the_api_server_holds_the_vault(production: Production,
                                             runs: dict[str, str]) -> None:
    settings = production.process_settings()
    vault_home = str(production.cluster.vault.settings.home)
    assert settings["api-server"] == {"MLSECRETS_HOME": vault_home}
    config = json.loads((production.cluster.vault.settings.home / "config.json").read_text())
    assert config["MLSECRETS_ALERT_RULES"] == str(production.alert_rules)  # the vault's own
    workers = {"MLSECRETS_HOME": str(production.worker_home),  # an empty folder
               "MLSECRETS_URL": f"{production.cluster.url}/mlsecrets",
               "MLSECRETS_AUDIT_CHECKPOINT_URL": production.checkpoints.as_uri() + "/"}
    for name in ("scheduler", "dag-processor"):  # the LocalExecutor's tasks are the scheduler's
        assert settings[name] == workers, name
    followed = production.xcom(FOLLOWER, runs[FOLLOWER], "reconnect")
    assert followed["worker_settings"] == sorted(workers)  # as a task process sees it
    told = production.xcom("mlsecrets_training_callable", runs["mlsecrets_training_callable"],
                           "train")
    assert told["child_settings"] == []  # the callable's child: only what it was given
    assert list(production.worker_home.iterdir()) == []  # no vault was made on a worker


def test_every_dag_succeeds_through_the_rest_api(production: Production,
                                                 runs: dict[str, str]) -> None:
    listed = production.rest("GET", "dags", params={"limit": 100})["dags"]
    assert {d["dag_id"] for d in listed} == DAGS  # a new example DAG must be added here
    assert production.rest("GET", "importErrors")["total_entries"] == 0
    for dag_id, run_id in runs.items():
        states = production.task_states(dag_id, run_id)
        assert production.run_state(dag_id, run_id) == "success", (dag_id, states)
        if dag_id != "mlsecrets_rotation":
            assert states and set(states.values()) == {"success"}, (dag_id, states)


def test_the_rotation_dag_runs_through_the_service(production: Production,
                                                   all_runs: Runs) -> None:
    """The @hourly DAG, unpaused, also ran on its own schedule at start-up: whichever run
    came first rotated the secret that was due, the others found nothing due ('rotate'
    mapped over nothing is skipped), and every run succeeded."""
    runs = {run_id: production.task_states("mlsecrets_rotation", run_id)
            for run_id in all_runs.rotation}
    kinds = {r["dag_run_id"]: r["run_type"] for r in production.runs("mlsecrets_rotation")}
    assert {kinds[run_id] for run_id in runs} == {"manual", "scheduled"}
    rotated = [run_id for run_id, states in runs.items() if "rotate[0]" in states]
    assert len(rotated) == 1, runs
    for run_id, states in runs.items():
        assert production.run_state("mlsecrets_rotation", run_id) == "success", states
        expected = {"find_due", "rotate_key", "verify_and_summarise"}
        expected |= {"rotate[0]"} if run_id in rotated else {"rotate"}
        assert set(states) == expected, runs
        assert {s for t, s in states.items() if t != "rotate"} == {"success"}, runs
        assert states.get("rotate", "skipped") == "skipped", runs
    [follower] = production.runs(FOLLOWER)
    assert follower["run_type"] == "asset_triggered"


def test_each_task_got_its_values(production: Production, runs: dict[str, str]) -> None:
    vault, admin = production.cluster.vault, production.cluster.admin
    canaries = production.canaries
    sizes = production.xcom("mlsecrets_example_connections",
                            runs["mlsecrets_example_connections"], "use_credentials")
    assert sizes == {"password_chars": len(canaries["db-password"]),
                     "endpoint_chars": len(canaries["endpoint"])}
    proof = json.loads((production.proof_dir / "proof.json").read_text())
    assert salted({"salt": proof["salt"], "sha256": proof["sha256"]["OPENAI_API_KEY"]},
                  canaries["api-key"])
    assert salted({"salt": proof["salt"], "sha256": proof["sha256"]["DB_PASSWORD"]},
                  canaries["db-password"])
    told = production.xcom("mlsecrets_training_callable", runs["mlsecrets_training_callable"],
                           "train")
    assert salted(told["api_key"], canaries["api-key"])
    assert salted(told["db_password"], canaries["db-password"])
    log = task_log(production, "mlsecrets_training_callable", runs["mlsecrets_training_callable"],
                   "train")
    assert "training with OPENAI_API_KEY=***" in log and "DB_PASSWORD has" in log, log[-3000:]
    followed = production.xcom(FOLLOWER, runs[FOLLOWER], "reconnect")
    assert followed["uris"] == [f"mlsecrets://{ROTATED}"] and followed["versions"] == [2]
    assert salted(followed, canaries["signing-key-v2"])
    versions = [(v.version, v.state) for v in vault.secrets.versions(admin, ROTATED)]
    assert versions[-1] == (2, "current") and len(versions) == 2


def test_the_audit_names_each_dag_and_the_rotator(production: Production,
                                                  runs: dict[str, str]) -> None:
    records = production.cluster.vault.audit.tail(production.cluster.admin, 400)
    injected = {(r.principal, r.path) for r in records
                if r.action == "secret.inject" and r.outcome == "allowed"}
    for dag_id, paths in GRANTS.items():
        for path in paths:
            assert (f"dag:{dag_id}", path) in injected, (dag_id, path)
    lookups = [r for r in records if r.principal.startswith("dag:")]
    assert lookups and {r.action for r in lookups} == {"secret.inject"}
    for r in lookups:
        assert r.context["verified_by"] == "execution-api", r
        assert r.context["dag_id"] == r.principal.removeprefix("dag:")
    # nothing was asked beyond a grant; the hook looks its connection up (the injection
    # operator's mlsecrets_default, the rotation DAG's mlsecrets_rotation) through the vault
    # first, which holds none: Airflow then reads its metastore
    others = {(r.path, r.outcome) for r in lookups if r.outcome != "allowed"}
    assert others <= {("connections/mlsecrets_default", "not_found"),
                      ("connections/mlsecrets_rotation", "not_found"),
                      ("connections/mlsecrets_maintenance", "not_found")}, others
    rotated = [r for r in records if r.action == "rotation.finish" and r.path == ROTATED]
    assert [(r.principal, r.outcome) for r in rotated] == [(ROTATOR, "allowed")]
    assert rotated[0].context.get("component") == "http"  # through the service
    assert rotated[0].context.get("claimed_dag_id") == "mlsecrets_rotation"
    assert any(r.action == "audit.verify" and r.principal == ROTATOR for r in records)
    published = sorted(production.checkpoints.glob("checkpoint-*.json"))
    assert len(published) == len(production.runs("mlsecrets_rotation"))  # one a run
    for checkpoint in published:  # the trail still holds every record each one names
        production.cluster.vault.audit.verify(production.cluster.admin,
                                              checkpoint=read_checkpoint(checkpoint))


def task_log(production: Production, dag_id: str, run_id: str, task_id: str) -> str:
    folder = (production.cluster.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" /
              f"task_id={task_id}")
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("*.log")))


def test_the_maintenance_dag_evaluates_through_the_service(production: Production,
                                                          all_runs: Runs) -> None:
    """Unpaused and triggered through the REST API, it succeeds on a worker with no vault:
    its task asks ``POST /v1/alerts/evaluate`` as the auditor its connection names."""
    assert all_runs.ids[MAINTENANCE] in all_runs.maintenance
    for run_id in all_runs.maintenance:  # its scheduled run(s) too, if one started
        states = production.task_states(MAINTENANCE, run_id)
        assert production.run_state(MAINTENANCE, run_id) == "success", states
        assert states == {"evaluate_alerts": "success"}, states
    result = production.xcom(MAINTENANCE, all_runs.ids[MAINTENANCE], "evaluate_alerts")
    assert set(result) >= {"records", "raised", "sent", "failed", "pending"}, result
    assert result["failed"] == 0 and result["errors"] == [], result
    evaluated = production.cluster.vault.audit.tail(
        production.cluster.admin, 50, AuditFilter(principal=MAINTAINER, action="alert.evaluate"))
    assert len(evaluated) >= len(all_runs.maintenance), evaluated
    for record in evaluated:
        assert record.outcome == "allowed", record
        assert record.context.get("component") == "http", record  # through the service
        assert record.context.get("claimed_dag_id") == MAINTENANCE, record


def first_reaches(production: Production) -> dict[tuple[str, str], list[AuditView]]:
    """Each granted (``dag:DAG``, path): the records of its allowed deliveries."""
    records = production.cluster.vault.audit.tail(
        production.cluster.admin, 1000, AuditFilter(action="secret.inject", outcome="allowed"))
    return {(f"dag:{dag_id}", path): [r for r in records if r.principal == f"dag:{dag_id}"
                                      and r.path == path]
            for dag_id, paths in GRANTS.items() for path in paths}


def names(body: dict[str, Any], record: AuditView) -> bool:
    return bool(body["audit_record"] == {"chain": record.chain, "seq": record.seq,
                                         "request_id": record.request_id})


def test_alerts_reach_a_real_receiver_once_each(production: Production, inbox: Inbox,
                                                runs: dict[str, str]) -> None:
    """A security engineer's plaintext read through the service (after the maintenance DAG
    is paused again: only the API server's own evaluator runs passes then) and each DAG's
    first reach of each secret arrive at the receiver once each, through the Airflow
    connection the HTTP notifier names, with who, what, when and the audit record."""
    reason = "INC-4711: checking the key the trainer uses"
    read = production.read_as_engineer("ml/openai/api_key", reason)
    assert read.returncode == 0, read.stderr[-2000:]
    assert read.stdout.strip() == production.canaries["api-key"]
    [record] = production.cluster.vault.audit.tail(
        production.cluster.admin, 10, AuditFilter(principal=ENGINEER, action="secret.read"))
    assert record.outcome == "allowed" and record.context.get("component") == "http", record
    reaches = first_reaches(production)
    assert all(reaches.values()), reaches

    def arrived() -> list[dict[str, Any]] | None:
        bodies = inbox.json()
        wanted = [any(names(b, record) for b in bodies)]
        wanted += [any(names(b, r) for b in bodies for r in got) for got in reaches.values()]
        return bodies if all(wanted) else None

    bodies = production.wait("the alerts at the receiver", arrived, timeout=180)
    [alert] = [b for b in bodies if names(b, record)]
    assert (alert["rule"], alert["principal"], alert["path"]) == (
        "human_read", ENGINEER, "ml/openai/api_key")
    assert alert["when"] == record.ts and alert["details"]["justification"] == reason
    assert alert["source"] == "mlsecrets" and ENGINEER in alert["subject"]
    for (principal, path), records in reaches.items():
        got = [b for b in bodies if b["rule"] == "new_dag_secret"
               and (b["principal"], b["path"]) == (principal, path)]
        assert len(got) == 1, (principal, path, got)  # its first reach only
        [first] = [r for r in records if names(got[0], r)]
        assert got[0]["when"] == first.ts
        assert got[0]["details"]["dag_id"] == principal.removeprefix("dag:")
        assert got[0]["details"]["task_id"] == first.context["task_id"]
    assert len({b["alert_id"] for b in bodies}) == len(bodies)  # each alert once

    def noted() -> bool:  # the sender notes a success just after the receiver answers
        with production.cluster.vault.core.transaction() as session:
            delivered = {a.id: a.delivered_to for a in session.scalars(select(Alert))}
        return all(delivered.get(b["alert_id"]) == NOTIFIER for b in bodies)

    production.wait("the delivered alerts noted", noted, timeout=60)
    needles = production.needles()
    assert not [found(needles, body.decode()) for body in inbox.bodies if found(
        needles, body.decode())]


def test_no_value_appears_anywhere(production: Production, runs: dict[str, str],
                                   inbox: Inbox) -> None:
    needles = production.needles()
    files = production.files()
    task_logs = [p for p in files if "/logs/dag_id=" in p]
    assert len(task_logs) >= len(TRIGGERED) + 1
    # The consoles too, the scheduler's included. Under LocalExecutor it repeats every task's
    # output without any masking (docs/airflow.md, "Known Airflow behaviour"), so it is
    # clean only because no DAG here prints or logs a value itself: the callable's print
    # passes the injection operator's redactor before it leaves the task. A value there is
    # a leak of ours; a DAG that prints one on purpose does not belong in this layout test.
    consoles = {name: production.cluster.output(name) for name in production.cluster.logs}
    assert set(consoles) == {"api-server", "scheduler", "dag-processor"}
    assert "training with OPENAI_API_KEY=***" in consoles["scheduler"]  # the copy, redacted
    assert all(str(path) in files for path in production.cluster.logs.values())
    files.update({f"alert {i} received": body.decode(errors="replace")
                  for i, body in enumerate(inbox.bodies)})  # what the notifier sent
    assert inbox.bodies and inbox.refused == 0
    leaks = {path: got for path, content in files.items() if (got := found(needles, content))}
    assert not leaks
    airflow = scan_database(production.databases["airflow"], needles)
    assert not airflow.hits
    for table in ("xcom", "rendered_task_instance_fields", "connection", "log", "dag_run"):
        assert airflow.rows[table] > 0, table  # the scan saw them
    vault = scan_database(production.databases["vault"], needles)
    assert not vault.hits
    assert vault.rows["mlsecrets_secret_versions"] >= 5, vault.rows  # the ciphertexts too
    rendered = production.rest(
        "GET", f"dags/mlsecrets_example_training/dagRuns/{runs['mlsecrets_example_training']}"
               "/taskInstances/train")["rendered_fields"]
    # references only; Airflow hides even those under names that look sensitive
    assert rendered["env"].get("OPENAI_API_KEY") in ("***", "secret:ml/openai/api_key")
    assert rendered["env"].get("DB_PASSWORD") in ("***", "conn:mlsecrets_example_db.password")
