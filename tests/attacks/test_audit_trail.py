"""Attacks on the audit trail by whoever can write the database but holds no HSM and no PIN.

Each test does what the outside review did, with raw SQL as the database owner (triggers
on, and dropped), a copied database file, or an edited export, on SQLite and PostgreSQL,
and asserts that the vault detects or refuses it: ``mlsecrets audit verify`` (default,
``--all-seals``, with checkpoints taken before and after) fails with exit 5, and the vault
does not seal anything on top of a forged head."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from airflow_provider_mlsecrets.audit.checkpoint import Checkpoint
from airflow_provider_mlsecrets.audit.record import Entry, next_hash
from airflow_provider_mlsecrets.cli.main import main
from airflow_provider_mlsecrets.errors import AuditChainBroken, InvalidInput
from airflow_provider_mlsecrets.keys.softhsm import DevToken
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.conftest import Database, Env, make_settings
from tests.test_audit import COLUMNS, fill, rehash_from, tamper, vault_id


@pytest.fixture
def settings(hsm: DevToken, tmp_path: Path, database: Database) -> Settings:
    # marks after every append, and pruning what was just written, so that each attack
    # below runs in a second
    return make_settings(hsm, tmp_path, database.url, audit_mark_interval=0,
                         audit_min_retention="0")


def cli(env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *argv: str) -> int:
    """Run the real CLI against the vault, as its security engineer."""
    for name, value in env.settings.as_config().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLSECRETS_HOME", str(tmp_path))
    monkeypatch.setenv("MLSECRETS_TOKEN", str(env.admin.token))
    return main(list(argv))


def newest(c: Connection, chain: int = 1) -> Any:
    return c.execute(text("SELECT seq, hash, seal FROM mlsecrets_audit WHERE chain = :c "
                          "ORDER BY seq DESC LIMIT 1"), {"c": chain}).one()


def checkpoint(env: Env) -> Checkpoint:
    return Checkpoint.from_json(env.vault.audit.checkpoint(env.admin).to_json())


def assert_broken(env: Env, *checkpoints: Checkpoint) -> None:
    for kwargs in ({}, {"all_seals": True}, *({"checkpoint": c} for c in checkpoints)):
        with pytest.raises(AuditChainBroken):
            env.vault.audit.verify(env.admin, **kwargs)  # type: ignore[arg-type]


# -- 1. a forged anchor ----------------------------------------------------------------
@pytest.mark.parametrize("with_request", [False, True])
def test_a_forged_anchor_with_a_copied_record_seal_is_refused(
        env: Env, with_request: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Triggers left on: an anchor copying the newest record's (chain, seq, hash, seal), every
    record of the chain deleted (the delete trigger allows it below an anchor), one planted
    ``audit.prune`` row naming the anchor, hashed onto it, and the head moved there."""
    fill(env)
    older = checkpoint(env)
    fill(env, 2)
    newer = checkpoint(env)
    with engine_for(env.settings.db_url).begin() as c:
        top = newest(c)
        c.execute(text("INSERT INTO mlsecrets_audit_anchors (chain, seq, hash, seal, pruned_at, "
                       "prune_request) VALUES (1, :s, :h, :seal, '2026-01-01T00:00:00Z', :r)"),
                  {"s": top.seq, "h": top.hash, "seal": top.seal,
                   "r": str(uuid.uuid4()) if with_request else None})
        c.execute(text("DELETE FROM mlsecrets_audit WHERE chain = 1"))
        entry = Entry(ts="2026-01-01T00:00:00.000000Z", principal="admin",
                      roles="security_engineer", action="audit.prune", path="", version=None,
                      outcome="allowed", reason=f"chain 1 from {top.seq} ({top.hash.hex()[:16]})",
                      request_id=str(uuid.uuid4()), context="{}")
        digest = next_hash(top.hash, 1, top.seq + 1, entry)
        c.execute(text(f"INSERT INTO mlsecrets_audit (chain, seq, {COLUMNS}, hash, seal) VALUES "
                       "(1, :s, :ts, :p, :roles, :a, '', NULL, 'allowed', :reason, :rid, '{}', "
                       ":h, :seal)"),
                  {"s": top.seq + 1, "ts": entry.ts, "p": entry.principal, "roles": entry.roles,
                   "a": entry.action, "reason": entry.reason, "rid": entry.request_id,
                   "h": digest, "seal": top.seal})
        c.execute(text("UPDATE mlsecrets_audit_head SET seq = :s, hash = :h WHERE chain = 1"),
                  {"s": top.seq + 1, "h": digest})
    assert_broken(env, older, newer)
    assert cli(env, monkeypatch, tmp_path, "audit", "verify") == 5


# -- 2. the chain recomputed in software -----------------------------------------------
def test_the_vault_does_not_seal_over_a_recomputed_chain(
        env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Update trigger dropped, one record's principal changed, every later hash recomputed
    from docs/formats.md and the head moved: the next append (any command, even ``audit
    verify``'s own record) refuses to chain onto it, so nothing seals the forgery."""
    fill(env)
    before = checkpoint(env)
    vid = vault_id(env)

    def change(c: Connection) -> None:
        c.execute(text("UPDATE mlsecrets_audit SET principal = 'mallory' WHERE chain = 1 "
                       "AND seq = 3"))
        rehash_from(c, vid, 3)

    tamper(env, change)
    from airflow_provider_mlsecrets.audit import log as audit_log
    audit_log._CHECKED.clear()  # what a new process (any CLI call) starts with
    with engine_for(env.settings.db_url).connect() as c:
        forged_head = newest(c)
    assert cli(env, monkeypatch, tmp_path, "secret", "get", "--reason", "in a test", "ml/s1") == 5
    assert "tampered" in capsys.readouterr().err
    with engine_for(env.settings.db_url).connect() as c:
        assert newest(c) == forged_head  # nothing was appended, nothing sealed
    assert_broken(env, before)
    assert cli(env, monkeypatch, tmp_path, "audit", "verify") == 5
    err = capsys.readouterr().err
    assert "seal" in err and "record" in err


# -- 3. rollback and truncation ---------------------------------------------------------
def test_a_database_put_back_to_an_older_copy_is_caught_by_the_hsm_mark(
        hsm: DevToken, tmp_path: Path, sqlite_db: Database,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Yesterday's copy of the SQLite file put back, with no checkpoint file anywhere."""
    settings = make_settings(hsm, tmp_path, sqlite_db.url, audit_mark_interval=0)
    vault = Vault(settings)
    admin = vault.initialise().admin_token
    env = Env(vault=vault, admin=Caller(admin, {"component": "test"}), settings=settings,
              database=sqlite_db)
    fill(env, 2)
    database = Path(sqlite_db.url.removeprefix("sqlite:///"))
    engine_for(sqlite_db.url).dispose()
    copy = tmp_path / "yesterday.db"
    shutil.copy(database, copy)
    fill(env, 3)  # today's work, marked in the HSM as it commits
    engine_for(sqlite_db.url).dispose()
    for suffix in ("-wal", "-shm"):
        Path(str(database) + suffix).unlink(missing_ok=True)
    shutil.copy(copy, database)
    assert cli(env, monkeypatch, tmp_path, "audit", "verify") == 5
    assert "rolled back" in capsys.readouterr().err
    # and the vault will not move its mark back over it on its own either
    with pytest.raises(AuditChainBroken, match="rolled back"):
        env.vault.secrets.put(env.admin, "ml/after", b"v")


def test_a_cut_tail_the_vault_would_write_on_is_caught_by_the_mark(env: Env) -> None:
    """The tail deleted (triggers off) and the head moved back to a genuinely sealed record:
    the vault may append after it, but will not move its mark over the gap."""
    fill(env, 4)
    with engine_for(env.settings.db_url).connect() as c:
        marked = newest(c)
    env.vault.audit.verify(env.admin)  # moves the mark

    def cut(c: Connection) -> None:
        c.execute(text("DELETE FROM mlsecrets_audit WHERE chain = 1 AND seq > :s"),
                  {"s": marked.seq - 3})
        row = newest(c)
        c.execute(text("UPDATE mlsecrets_audit_head SET seq = :s, hash = :h WHERE chain = 1"),
                  {"s": row.seq, "h": row.hash})

    tamper(env, cut)
    with pytest.raises(AuditChainBroken, match="rolled back"):
        env.vault.secrets.put(env.admin, "ml/regrow", b"v")
    assert_broken(env)


def test_a_truncated_tail_fails_without_any_checkpoint(env: Env) -> None:
    fill(env, 3)
    env.vault.audit.verify(env.admin)

    def cut(c: Connection) -> None:
        top = newest(c)
        c.execute(text("DELETE FROM mlsecrets_audit WHERE chain = 1 AND seq = :s"),
                  {"s": top.seq})
        row = newest(c)
        c.execute(text("UPDATE mlsecrets_audit_head SET seq = :s, hash = :h WHERE chain = 1"),
                  {"s": row.seq, "h": row.hash})

    tamper(env, cut)
    with pytest.raises(AuditChainBroken, match="high-water mark"):
        env.vault.audit.verify(env.admin)


# -- 7. exports and retention -----------------------------------------------------------
def test_records_cut_from_the_front_of_a_prune_export_are_detected(env: Env) -> None:
    """Drop records 1..k of a chain from the export, write record k's seq and hash into the
    header's start and fix the record count: the start is neither genesis nor an anchor
    sealed as one."""
    fill(env, 4)
    out = io.StringIO()
    env.vault.audit.prune(env.admin, datetime.now(timezone.utc), out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    header, body, trailer = lines[0], lines[1:-1], lines[-1]
    chain1 = [r for r in body if r["chain"] == 1]
    k = 2
    header["starts"]["1"] = {"after": chain1[k - 1]["seq"], "hash": chain1[k - 1]["hash"]}
    kept = [r for r in body if not (r["chain"] == 1 and r["seq"] <= chain1[k - 1]["seq"])]
    trailer["records"] = len(kept)
    edited = [json.dumps(x) for x in (header, *kept, trailer)]
    report = env.vault.audit.verify_export(env.admin, edited)
    assert not report.ok and "cut from the front" in report.problems[0]
    honest = env.vault.audit.verify_export(env.admin, out.getvalue().splitlines())
    assert honest.ok, honest.problems


def test_pruning_recent_records_is_refused(env: Env, hsm: DevToken, tmp_path: Path) -> None:
    strict = Vault(make_settings(hsm, tmp_path, env.settings.db_url,
                                 key_prefix=env.settings.key_prefix))
    fill(env, 2)
    out = io.StringIO()
    for before in (datetime(2099, 1, 1, tzinfo=timezone.utc),
                   datetime.now(timezone.utc) - timedelta(days=29)):
        with pytest.raises(InvalidInput, match="MLSECRETS_AUDIT_MIN_RETENTION"):
            strict.audit.prune(env.admin, before, out)
    assert out.getvalue() == ""
    assert strict.audit.verify(env.admin).ok


def test_an_anchor_from_an_older_release_is_resealed_only_when_its_prune_is_genuine(
        env: Env) -> None:
    """An anchor as the previous release wrote it (a record's seal, no prune id) is refused
    until ``init`` reseals it, which it does only for one a sealed prune record names."""
    fill(env, 3)
    env.vault.audit.prune(env.admin, datetime.now(timezone.utc), io.StringIO())

    def downgrade(c: Connection) -> None:  # what the old release left in the table
        if env.database.kind == "sqlite":
            c.execute(text("DROP TRIGGER mlsecrets_audit_anchors_no_update"))
        else:
            c.execute(text("DROP TRIGGER mlsecrets_audit_anchors_no_update ON "
                           "mlsecrets_audit_anchors"))
        # the old release stored the last pruned record's own seal; the reseal never reads
        # it, so any bytes stand in for it here
        c.execute(text("UPDATE mlsecrets_audit_anchors SET prune_request = NULL, seal = :s"),
                  {"s": b"\x01" * 32})

    with engine_for(env.settings.db_url).begin() as c:
        downgrade(c)
    with pytest.raises(AuditChainBroken, match="predates anchor seals"):
        env.vault.audit.verify(env.admin)
    result = env.vault.initialise()
    assert any("anchor seals" in item for item in result.created)
    assert env.vault.audit.verify(env.admin, all_seals=True).ok


def test_restoring_an_older_backup_is_refused_unless_the_rollback_is_accepted(
        env: Env, tmp_path: Path) -> None:
    """Yesterday's backup restored to erase what happened since: refused, and the database
    stays empty; accepted explicitly, the marks move back and the restore says so."""
    import dataclasses

    from airflow_provider_mlsecrets._files import private_file
    from airflow_provider_mlsecrets.errors import IntegrityError

    fill(env, 2)
    backup = tmp_path / "yesterday.backup"
    with private_file(backup) as handle:
        env.vault.backups.backup(env.admin, handle)
    env.vault.secrets.put(env.admin, "ml/evidence", b"v")  # what the attacker wants gone
    target = dataclasses.replace(env.settings, db_url=f"sqlite:///{tmp_path / 'r.db'}")
    with pytest.raises(IntegrityError, match="high-water mark"):
        Vault(target).backups.restore(backup)
    with engine_for(target.db_url).connect() as c:
        assert c.execute(text("SELECT count(*) FROM mlsecrets_audit")).scalar_one() == 0
    restored = Vault(target)
    restored.backups.restore(backup, accept_rollback=True)
    assert restored.audit.verify(env.admin).ok
    [record] = [r for r in restored.audit.tail(env.admin, 5) if r.action == "vault.restore"]
    assert "ROLLBACK accepted: chain 1 from record" in record.reason


def test_a_checkpoint_below_an_anchor_is_reported_and_checked_in_the_export(env: Env) -> None:
    """A checkpoint whose record was pruned since is never skipped silently: verification
    says so, and the prune's export checks the record itself (a changed one is caught)."""
    import dataclasses

    fill(env, 3)
    point = checkpoint(env)
    fill(env, 1)
    out = io.StringIO()
    env.vault.audit.prune(env.admin, datetime.now(timezone.utc), out)
    report = env.vault.audit.verify(env.admin, checkpoint=point)
    assert any("was pruned since" in note for note in report.notes), report.notes
    lines = out.getvalue().splitlines()
    assert env.vault.audit.verify_export(env.admin, lines, checkpoint=point).points_matched == 1
    moved = dataclasses.replace(point, chains=tuple(
        dataclasses.replace(p, hash=bytes(32)) for p in point.chains))
    bad = env.vault.audit.verify_export(env.admin, lines, checkpoint=moved)
    assert not bad.ok and "bad seal" in bad.problems[0]
