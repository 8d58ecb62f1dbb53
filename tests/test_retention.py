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

from airflow_provider_mlsecrets.audit.record import Entry, next_hash
from airflow_provider_mlsecrets.cli.main import main
from airflow_provider_mlsecrets.errors import AccessDenied, AuditChainBroken
from airflow_provider_mlsecrets.keys import MacKey
from airflow_provider_mlsecrets.service import Caller
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.conftest import Env

FIELDS = ("ts", "principal", "roles", "action", "path", "version", "outcome", "reason",
          "request_id", "context")


def records(env: Env) -> int:
    with engine_for(env.settings.db_url).connect() as c:
        return int(c.execute(text("SELECT count(*) FROM mlsecrets_audit")).scalar_one())


def prune(env: Env, before: datetime,
          caller: Caller | None = None) -> tuple[Any, list[dict[str, Any]]]:
    out = io.StringIO()
    info = env.vault.audit.prune(caller or env.admin, before, out)
    return info, [json.loads(line) for line in out.getvalue().splitlines()]


def check_export(env: Env, lines: list[dict[str, Any]]) -> int:
    """Verify an export on its own: each chain's run from its start hash to the checkpoint,
    whose seals the HSM made."""
    header, body, trailer = lines[0], lines[1:-1], lines[-1]
    by_chain: dict[int, list[dict[str, Any]]] = {}
    for r in body:
        by_chain.setdefault(r["chain"], []).append(r)
    points = {p["chain"]: p for p in trailer["checkpoint"]["chains"]}
    assert set(by_chain) == set(points)
    for chain, rows in by_chain.items():
        previous = bytes.fromhex(header["starts"][str(chain)]["hash"])
        for r in rows:
            previous = next_hash(previous, chain, r["seq"], Entry(*(r[f] for f in FIELDS)))
            assert previous.hex() == r["hash"]
        assert previous.hex() == points[chain]["hash"]
        seal = env.vault.core.keys.mac(MacKey.AUDIT, previous)
        assert seal.hex() == points[chain]["seal"]
    return len(body)


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
    moved = check_export(env, lines)
    assert moved == sum(info.pruned.values()) > 8
    assert records(env) == before - moved + 1  # and the prune's own record
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
    with pytest.raises(AuditChainBroken, match=r"named by no audit\.prune record"):
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
    time.sleep(1.1)
    assert main(["--json", "audit", "prune", "--before", "1s", "--out",
                 str(tmp_path / "old.jsonl")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["records"] >= 2 and (tmp_path / "old.jsonl").stat().st_mode & 0o777 == 0o600
    assert main(["audit", "verify"]) == 0
