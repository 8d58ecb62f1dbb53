"""The rotation DAG through ``airflow dags test``: due secrets rotated as mapped tasks, the
others left alone, asset events for ``mlsecrets://PATH`` in Airflow's metadata database, the
summary in the log, a checkpoint published outside the database every run, and a run that
fails loudly when the audit chain was altered."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from airflow_provider_mlsecrets.rotation.dag import format_summary, secret_asset, summarise
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service._core import utcnow
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.airflow_env import ROOT, AirflowEnv
from tests.airflow_env import airflow_env as airflow_env

DUE = ["rot/api_token", "rot/webhook_secret"]
LATER = "rot/not_yet"


@pytest.fixture(scope="module")
def rotation_env(airflow_env: AirflowEnv) -> AirflowEnv:
    vault, admin = airflow_env.vault, airflow_env.admin
    policy = RotationPolicy(schedule="30d", rotator="random", config={"length": 40},
                            grace="1h")
    for path in [*DUE, LATER]:
        vault.secrets.put(admin, path, f"first-{path}".encode())
        vault.rotation.set_policy(admin, path, policy,
                                  next_due=utcnow() - timedelta(seconds=1)
                                  if path in DUE else None)
    token = vault.access.create_principal(admin, "rotation-dag", "rotator")
    vault.access.grant(admin, "rotation-dag", "**", ["rotate", "list", "audit"])
    token_file = airflow_env.home.parent / "rotator.token"
    token_file.write_text(token)
    airflow_env.env["MLSECRETS_TOKEN_FILE"] = str(token_file)
    return airflow_env


def run_rotation(air: AirflowEnv, **env: str) -> subprocess.CompletedProcess[str]:
    return air.run("dags", "test", "mlsecrets_rotation", AIRFLOW__CORE__PARALLELISM="1", **env)


def test_the_dag_rotates_what_is_due_emits_asset_events_and_verifies(
        rotation_env: AirflowEnv) -> None:
    vault, admin = rotation_env.vault, rotation_env.admin
    got = run_rotation(rotation_env)
    output = got.stdout + got.stderr
    assert got.returncode == 0, output[-4000:]
    for path in DUE:
        assert vault.secrets.versions(admin, path)[-1].version == 2
        value = vault.secrets.read(admin, path, reason="in a test")
        assert len(value) == 40 and value.decode() not in output
    assert [v.version for v in vault.secrets.versions(admin, LATER)] == [1]
    assert "rotation summary:" in output and "audit chain verified" in output
    assert "rotated        2  rot/api_token, rot/webhook_secret" in output
    assert "audit checkpoints are not being published: set MLSECRETS_AUDIT_CHECKPOINT_URL" \
        in output
    assert f"skipped        1  {LATER}" in output
    records = [r for r in vault.audit.tail(admin, 200) if r.principal == "rotation-dag"]
    actions = {r.action for r in records}
    assert {"rotation.due", "rotation.begin", "rotation.create", "rotation.set",
            "rotation.test", "rotation.finish", "audit.verify", "rotation.retain"} <= actions
    assert {r.context.get("dag_id") for r in records} == {"mlsecrets_rotation"}
    with sqlite3.connect(rotation_env.home / "airflow.db") as db:
        events = db.execute(
            "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.uri LIKE 'mlsecrets://%' ORDER BY a.uri").fetchall()
    assert [uri for uri, _ in events] == [secret_asset(p).uri for p in DUE]
    assert all('"version": 2' in extra for _, extra in events)
    again = run_rotation(rotation_env)  # nothing due now: nothing changes
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert [v.version for v in vault.secrets.versions(admin, DUE[0])] == [1, 2]


def test_the_dag_rotates_the_key_encryption_key_on_its_cadence(
        rotation_env: AirflowEnv) -> None:
    vault, admin = rotation_env.vault, rotation_env.admin
    before = {k.label: k.state for k in vault.key_list(admin)}
    got = rotation_env.run("dags", "test", "mlsecrets_rotation_keys",
                           AIRFLOW__CORE__PARALLELISM="1",
                           AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "tests" / "dags"))
    assert got.returncode == 0, (got.stdout + got.stderr)[-4000:]
    keys = {k.label: k for k in vault.key_list(admin)}
    [old] = [label for label, state in before.items() if state == "current"]
    [new] = [k for k in keys.values() if k.state == "current"]
    assert keys[old].state == "disabled" and keys[old].versions_wrapped == 0
    assert new.label != old and new.versions_wrapped > 0
    assert "key rotated True" in got.stdout + got.stderr
    for path in [*DUE, LATER]:
        assert vault.secrets.read(admin, path, reason="in a test")


def make_due(air: AirflowEnv, path: str) -> None:
    policy = RotationPolicy(schedule="30d", rotator="random", config={"length": 40})
    air.vault.secrets.put(air.admin, path, b"first")
    air.vault.rotation.set_policy(air.admin, path, policy,
                                  next_due=utcnow() - timedelta(seconds=1))


def versions(air: AirflowEnv, path: str) -> list[int]:
    return [v.version for v in air.vault.secrets.versions(air.admin, path)]


def test_the_dag_publishes_a_checkpoint_that_verify_accepts(rotation_env: AirflowEnv,
                                                            tmp_path: Path) -> None:
    folder = tmp_path / "published"  # created by the first publish
    make_due(rotation_env, "rot/published")
    got = run_rotation(rotation_env, MLSECRETS_AUDIT_CHECKPOINT_URL=f"file://{folder}/")
    output = got.stdout + got.stderr
    assert got.returncode == 0, output[-4000:]
    assert versions(rotation_env, "rot/published") == [1, 2]
    [name] = os.listdir(folder)
    assert re.fullmatch(r"checkpoint-\d{8}T\d{6}\.\d{6}Z\.json", name)
    assert f"audit checkpoint published to file://{folder}/{name}" in output
    assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    verified = subprocess.run(
        [sys.executable, "-m", "airflow_provider_mlsecrets.cli.main", "audit", "verify",
         "--checkpoint", str(folder / name)],
        env=rotation_env.env, capture_output=True, text=True, timeout=120, check=False)
    assert verified.returncode == 0, verified.stderr
    assert "checkpoint matched" in verified.stdout
    records = [r for r in rotation_env.vault.audit.tail(rotation_env.admin, 50)
               if r.action == "audit.checkpoint"]
    assert records and records[-1].principal == "rotation-dag"


def test_a_checkpoint_that_cannot_be_published_fails_the_task_not_the_rotations(
        rotation_env: AirflowEnv) -> None:
    make_due(rotation_env, "rot/unpublished")
    got = run_rotation(rotation_env, MLSECRETS_AUDIT_CHECKPOINT_URL="nosuch://bucket/cp/")
    output = got.stdout + got.stderr
    assert got.returncode != 0
    assert "AUDIT CHECKPOINT NOT PUBLISHED: nosuch://bucket/cp/" in output
    assert "audit chain verified" in output
    assert versions(rotation_env, "rot/unpublished") == [1, 2]  # the rotation stands


def test_the_dag_fails_loudly_on_an_altered_audit_trail(rotation_env: AirflowEnv) -> None:
    with engine_for(rotation_env.vault.settings.db_url).begin() as c:
        c.execute(text("DROP TRIGGER mlsecrets_audit_no_update"))
        c.execute(text("UPDATE mlsecrets_audit SET reason = 'nothing happened' "
                       "WHERE seq = 3"))
    got = run_rotation(rotation_env)
    assert got.returncode != 0
    assert "AUDIT CHAIN VERIFICATION FAILED" in got.stdout + got.stderr


def test_summary_counts_failed_mapped_tasks() -> None:
    summary = summarise(["a", "b", "c", "e"], [{"path": "a", "result": "rotated"}, None,
                                               {"path": "c", "result": "not due"},
                                               {"path": "e", "result": "cancelled"}],
                        ["a", "b", "c", "d", "e"])
    assert summary == {"rotated": ["a"], "invalidated": [], "cancelled": ["e"], "busy": [],
                       "failed": ["b"], "skipped": ["c", "d"]}
    assert any("failed" in line and "b" in line for line in format_summary(summary))
