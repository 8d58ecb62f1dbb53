"""Audit retention: records older than a moment are moved to a file that verifies on its
own, the rest of the trail still verifies (against a checkpoint taken before too), appends
go on, and deleting records any other way is refused or detected."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from airflow_provider_mlsecrets.cli.main import main
from airflow_provider_mlsecrets.errors import AccessDenied, AuditChainBroken
from airflow_provider_mlsecrets.keys.softhsm import DevToken
from airflow_provider_mlsecrets.service import Caller
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.conftest import Database, Env, make_settings


@pytest.fixture
def settings(hsm: DevToken, tmp_path: Path, database: Database) -> Settings:
    """These tests prune what they just wrote: no minimum retention."""
    return make_settings(hsm, tmp_path, database.url, audit_min_retention="0")


def records(env: Env) -> int:
    with engine_for(env.settings.db_url).connect() as c:
        return int(c.execute(text("SELECT count(*) FROM mlsecrets_audit")).scalar_one())


def prune(env: Env, before: datetime,
          caller: Caller | None = None) -> tuple[Any, list[dict[str, Any]]]:
    out = io.StringIO()
    info = env.vault.audit.prune(caller or env.admin, before, out)
    return info, [json.loads(line) for line in out.getvalue().splitlines()]


def check_export(env: Env, lines: list[dict[str, Any]]) -> int:
    """The export verifies on its own: each chain's run from its start hash to the
    checkpoint, whose seals the HSM made (audit/export.py)."""
    report = env.vault.audit.verify_export(env.admin, [json.dumps(line) for line in lines])
    assert report.ok, report.problems
    return report.records


def test_a_changed_or_shortened_export_does_not_verify(env: Env) -> None:
    for i in range(4):
        env.vault.secrets.put(env.admin, f"ml/k{i}", b"v")
    _, lines = prune(env, datetime.now(timezone.utc))
    changed = [dict(line) for line in lines]
    changed[2]["reason"] = "nothing happened here"
    for bad in (changed, lines[:2] + lines[3:], lines[:-1]):
        report = env.vault.audit.verify_export(env.admin, [json.dumps(x) for x in bad])
        assert not report.ok


def test_pruned_records_leave_a_verifiable_export_and_a_verifying_trail(env: Env) -> None:
    for i in range(8):
        env.vault.secrets.put(env.admin, f"ml/old{i}", b"v")
    old_checkpoint = env.vault.audit.checkpoint(env.admin)
    time.sleep(0.01)
    cutoff = datetime.now(timezone.utc)
    time.sleep(0.01)
    env.vault.secrets.put(env.admin, "ml/new", b"v")
    before = records(env)
    info, lines = prune(env, cutoff)
    after = records(env)
    moved = check_export(env, lines)
    assert moved == sum(info.pruned.values()) > 8
    assert after == before - moved + 1  # and the prune's own record
    assert lines[0]["before"] <= cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert all(r["ts"] < lines[0]["before"] for r in lines[1:-1])  # nothing newer moved
    report = env.vault.audit.verify(env.admin, all_seals=True)
    assert report.ok and report.records == records(env) - 1  # minus verify's own record
    assert env.vault.audit.verify(env.admin, checkpoint=old_checkpoint).ok
    env.vault.secrets.put(env.admin, "ml/after", b"v")  # appends go on
    assert env.vault.audit.verify(env.admin).ok
    _, again = prune(env, datetime.now(timezone.utc))  # a second prune goes from the anchor
    assert check_export(env, again) > 0
    assert env.vault.audit.verify(env.admin, all_seals=True).ok


def test_records_deleted_outside_prune_are_refused_or_detected(env: Env) -> None:
    for i in range(4):
        env.vault.secrets.put(env.admin, f"ml/k{i}", b"v")
    with pytest.raises(DBAPIError, match="append-only"), \
            engine_for(env.settings.db_url).begin() as c:
        c.execute(text("DELETE FROM mlsecrets_audit WHERE chain = 1 AND seq <= 2"))
    # an anchor planted from a genuine record (its seal is real) to excuse a deletion
    with engine_for(env.settings.db_url).begin() as c:
        row = c.execute(text("SELECT seq, hash, seal FROM mlsecrets_audit WHERE chain = 1 "
                             "AND seq = 3")).one()
        c.execute(text("INSERT INTO mlsecrets_audit_anchors (chain, seq, hash, seal, "
                       "pruned_at) VALUES (1, 3, :h, :s, 'x')"), {"h": row.hash, "s": row.seal})
        c.execute(text("DELETE FROM mlsecrets_audit WHERE chain = 1 AND seq <= 3"))
    with pytest.raises(AuditChainBroken, match="predates anchor seals"):
        env.vault.audit.verify(env.admin)
    with pytest.raises(DBAPIError, match="append-only"), \
            engine_for(env.settings.db_url).begin() as c:
        c.execute(text("DELETE FROM mlsecrets_audit_anchors"))


def test_only_an_unfenced_security_engineer_prunes(env: Env) -> None:
    auditor = env.principal("ada", "auditor")
    before = records(env)
    with pytest.raises(AccessDenied):
        prune(env, datetime.now(timezone.utc), auditor)
    assert records(env) == before + 1  # only the denial was recorded


def test_a_broken_trail_is_not_pruned(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/k", b"v")
    with engine_for(env.settings.db_url).begin() as c:
        if env.database.kind == "sqlite":
            c.execute(text("DROP TRIGGER mlsecrets_audit_no_update"))
        else:
            c.execute(text("DROP TRIGGER mlsecrets_audit_no_update ON mlsecrets_audit"))
        c.execute(text("UPDATE mlsecrets_audit SET reason = 'x' WHERE chain = 1 AND seq = 2"))
    out = io.StringIO()
    with pytest.raises(AuditChainBroken, match="nothing was pruned"):
        env.vault.audit.prune(env.admin, datetime.now(timezone.utc), out)
    assert out.getvalue() == ""


def test_the_cli_prunes(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    if env.database.kind != "sqlite":
        pytest.skip("the CLI is the same on both databases")
    env.vault.secrets.put(env.admin, "ml/k", b"v")
    for name, value in env.settings.as_config().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLSECRETS_HOME", str(tmp_path))
    monkeypatch.setenv("MLSECRETS_TOKEN", str(env.admin.token))
    monkeypatch.setenv("MLSECRETS_AUDIT_MIN_RETENTION", "1s")
    time.sleep(1.1)
    assert main(["--json", "audit", "prune", "--before", "1s", "--out",
                 str(tmp_path / "old.jsonl")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["records"] >= 2 and (tmp_path / "old.jsonl").stat().st_mode & 0o777 == 0o600
    assert main(["audit", "verify"]) == 0
    assert main(["audit", "verify-export", str(tmp_path / "old.jsonl")]) == 0
    lines = (tmp_path / "old.jsonl").read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert main(["audit", "verify-export", str(tmp_path / "cut.jsonl")]) == 5
