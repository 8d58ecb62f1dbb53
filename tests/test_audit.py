"""The audit trail: append-only triggers, and verification that catches every kind of change."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from airflow_provider_mlsecrets.audit.checkpoint import Checkpoint
from airflow_provider_mlsecrets.audit.record import Entry, genesis, next_hash
from airflow_provider_mlsecrets.errors import AccessDenied, AuditChainBroken, InvalidInput
from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.migrate import upgrade
from tests.conftest import Env

COLUMNS = ("ts, principal, roles, action, path, version, outcome, reason, request_id, context")


def fill(env: Env, n: int = 6) -> None:
    for i in range(n):
        env.vault.secrets.put(env.admin, f"ml/s{i}", f"value-{i}".encode())


def drop_triggers(c: Connection, kind: str) -> None:
    """What an attacker with database write access does first."""
    if kind == "sqlite":
        c.execute(text("DROP TRIGGER mlsecrets_audit_no_update"))
        c.execute(text("DROP TRIGGER mlsecrets_audit_no_delete"))
    else:
        c.execute(text("DROP TRIGGER mlsecrets_audit_no_update ON mlsecrets_audit"))
        c.execute(text("DROP TRIGGER mlsecrets_audit_no_delete ON mlsecrets_audit"))


def tamper(env: Env, change: Callable[[Connection], None]) -> None:
    with engine_for(env.settings.db_url).begin() as c:
        drop_triggers(c, env.database.kind)
        change(c)


def first_bad(env: Env, **kwargs: object) -> int | None:
    with pytest.raises(AuditChainBroken) as info:
        env.vault.audit.verify(env.admin, **kwargs)  # type: ignore[arg-type]
    return info.value.seq


def rehash_from(c: Connection, vault_id: str, start: int) -> None:
    """Recompute every hash from ``start`` on, as an attacker can (not the seals)."""
    rows = c.execute(text(f"SELECT seq, {COLUMNS}, hash FROM mlsecrets_audit WHERE chain = 1 "
                          "ORDER BY seq")).all()
    previous = genesis(vault_id, 1)
    for r in rows:
        digest = next_hash(previous, 1, r.seq, Entry(*r[1:11]))
        if r.seq >= start:
            c.execute(text("UPDATE mlsecrets_audit SET hash = :h WHERE chain = 1 AND seq = :s"),
                      {"h": digest, "s": r.seq})
        previous = digest
    c.execute(text("UPDATE mlsecrets_audit_head SET seq = :s, hash = :h WHERE chain = 1"),
              {"s": rows[-1].seq, "h": previous})


def vault_id(env: Env) -> str:
    with env.vault.core.transaction() as session:
        return env.vault.core.vault_id(session)


def test_an_untouched_trail_verifies(env: Env) -> None:
    fill(env)
    report = env.vault.audit.verify(env.admin, all_seals=True)
    assert report.ok and report.records == 7 and report.seals_checked == 7


def test_triggers_refuse_update_and_delete(env: Env) -> None:
    fill(env, 1)
    for statement in ("UPDATE mlsecrets_audit SET reason = 'x'", "DELETE FROM mlsecrets_audit"):
        with pytest.raises(DBAPIError, match="append-only"), \
                engine_for(env.settings.db_url).begin() as c:
            c.execute(text(statement))
    if env.database.kind == "postgres":
        with pytest.raises(DBAPIError, match="append-only"), \
                engine_for(env.settings.db_url).begin() as c:
            c.execute(text("TRUNCATE mlsecrets_audit"))
    assert env.vault.audit.verify(env.admin).ok


def test_a_modified_record_is_named(env: Env) -> None:
    fill(env)
    tamper(env, lambda c: c.execute(text(
        "UPDATE mlsecrets_audit SET principal = 'mallory' WHERE seq = 4")))
    assert first_bad(env) == 4


def test_a_modified_record_with_recomputed_hashes_is_named_by_its_seal(env: Env) -> None:
    fill(env)
    vid = vault_id(env)

    def change(c: Connection) -> None:
        c.execute(text("UPDATE mlsecrets_audit SET outcome = 'denied' WHERE seq = 3"))
        rehash_from(c, vid, 3)

    tamper(env, change)
    assert first_bad(env) == 3
    assert first_bad(env, all_seals=True) == 3


def test_a_deleted_record_is_named(env: Env) -> None:
    fill(env)
    tamper(env, lambda c: c.execute(text("DELETE FROM mlsecrets_audit WHERE seq = 5")))
    assert first_bad(env) == 5


def test_an_inserted_record_is_caught(env: Env) -> None:
    fill(env)
    vid = vault_id(env)

    def change(c: Connection) -> None:
        # forge a record at the end, with a correct hash but no valid seal
        last = c.execute(text("SELECT seq, hash FROM mlsecrets_audit ORDER BY seq DESC")).first()
        assert last is not None
        entry = Entry("2026-01-01T00:00:00.000000Z", "admin", "security_engineer", "secret.read",
                      "ml/s1", 1, "allowed", "forged", "r", "{}")
        digest = next_hash(bytes(last.hash), 1, last.seq + 1, entry)
        c.execute(text(f"INSERT INTO mlsecrets_audit (chain, seq, {COLUMNS}, hash, seal) VALUES "
                       "(1, :seq, :ts, :p, :roles, :a, :path, :v, :o, :r, :rid, :ctx, :h, :seal)"),
                  {"seq": last.seq + 1, "ts": entry.ts, "p": entry.principal,
                   "roles": entry.roles, "a": entry.action, "path": entry.path, "v": 1,
                   "o": entry.outcome, "r": entry.reason, "rid": "r", "ctx": "{}", "h": digest,
                   "seal": b"\x00" * 32})
        c.execute(text("UPDATE mlsecrets_audit_head SET seq = :s, hash = :h"),
                  {"s": last.seq + 1, "h": digest})
        assert vid

    tamper(env, change)
    assert first_bad(env) == 8


def test_reordered_records_are_caught(env: Env) -> None:
    fill(env)

    def change(c: Connection) -> None:
        a = c.execute(text(f"SELECT {COLUMNS} FROM mlsecrets_audit WHERE seq = 3")).one()
        b = c.execute(text(f"SELECT {COLUMNS} FROM mlsecrets_audit WHERE seq = 4")).one()
        names = [n.strip() for n in COLUMNS.split(",")]
        for seq, row in ((3, b), (4, a)):
            assignments = ", ".join(f"{n} = :{n}" for n in names)
            c.execute(text(f"UPDATE mlsecrets_audit SET {assignments} WHERE seq = :seq"),
                      {**dict(zip(names, row, strict=True)), "seq": seq})

    tamper(env, change)
    assert first_bad(env) == 3


def test_truncation_is_caught_by_a_checkpoint(env: Env, tmp_path: Path) -> None:
    fill(env)
    checkpoint_file = tmp_path / "cp.json"
    checkpoint_file.write_text(env.vault.audit.checkpoint(env.admin).to_json())
    checkpoint = Checkpoint.read(checkpoint_file)
    assert env.vault.audit.verify(env.admin, checkpoint=checkpoint).ok
    cut = checkpoint.chains[0].seq - 2
    vid = vault_id(env)

    def change(c: Connection) -> None:
        c.execute(text("DELETE FROM mlsecrets_audit WHERE seq > :s"), {"s": cut})
        rehash_from(c, vid, cut + 1)  # moves the head back to the new end

    tamper(env, change)
    # the HSM's high-water mark (moved by the checkpoint's verification) catches it alone
    with pytest.raises(AuditChainBroken, match="rolled back"):
        env.vault.audit.verify(env.admin)
    with pytest.raises(AuditChainBroken, match="truncated"):
        env.vault.audit.verify(env.admin, checkpoint=checkpoint)


def test_a_forged_checkpoint_is_refused(env: Env, tmp_path: Path) -> None:
    fill(env, 2)
    data = json.loads(env.vault.audit.checkpoint(env.admin).to_json())
    data["chains"][0]["seal"] = "00" * 32
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    with pytest.raises(AuditChainBroken, match="not made by this vault"):
        env.vault.audit.verify(env.admin, checkpoint=Checkpoint.read(forged))
    forged.write_text("{}")
    with pytest.raises(InvalidInput, match="not an audit checkpoint"):
        Checkpoint.read(forged)


def test_deleting_the_tail_without_fixing_the_head_is_caught(env: Env) -> None:
    fill(env)
    tamper(env, lambda c: c.execute(text("DELETE FROM mlsecrets_audit WHERE seq >= 6")))
    with pytest.raises(AuditChainBroken, match="deleted from the end"):
        env.vault.audit.verify(env.admin)


def test_filters_for_forensic_work(env: Env) -> None:
    from airflow_provider_mlsecrets.service.audit import AuditFilter

    fill(env, 2)
    etl = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    env.vault.secrets.inject(etl, "ml/s1")
    with pytest.raises(AccessDenied):
        env.vault.secrets.read(etl, "ml/s0", reason="in a test")
    denied = env.vault.audit.tail(env.admin, 50, AuditFilter(principal="etl", outcome="denied"))
    assert [(r.action, r.path) for r in denied] == [("secret.read", "ml/s0")]
    assert [r.path for r in env.vault.audit.export(env.admin, AuditFilter(action="secret.inject"))
            ] == ["ml/s1"]
    assert env.vault.audit.tail(env.admin, 50, AuditFilter(path_prefix="ml/s1"))
    with pytest.raises(InvalidInput):
        AuditFilter(outcome="maybe")


def _plant(c: Connection, chain: int, seq: int) -> None:
    c.execute(text(f"INSERT INTO mlsecrets_audit (chain, seq, {COLUMNS}, hash, seal) VALUES "
                   "(:chain, :seq, '2026-01-01T00:00:00.000000Z', 'pipe', 'pipeline', "
                   "'secret.read', 'x/y', 1, 'allowed', 'planted', 'r', '{}', :h, :h)"),
              {"chain": chain, "seq": seq, "h": b"\x00" * 32})


@pytest.mark.parametrize(("chain", "seq", "problem"), [
    (1, 1_000_000, "beyond its head"), (7, 1, "no head")])
def test_records_planted_outside_the_walked_chain_are_caught(env: Env, chain: int, seq: int,
                                                              problem: str) -> None:
    fill(env, 2)
    with engine_for(env.settings.db_url).begin() as c:  # INSERT needs no dropped trigger
        _plant(c, chain, seq)
    with pytest.raises(AuditChainBroken, match=problem):
        env.vault.audit.verify(env.admin, all_seals=True)


def test_a_head_moved_back_before_the_checkpoint_is_caught(env: Env, tmp_path: Path) -> None:
    fill(env, 4)
    checkpoint = env.vault.audit.checkpoint(env.admin)
    cut = checkpoint.chains[0].seq - 3
    vid = vault_id(env)

    def change(c: Connection) -> None:
        # keep the checkpointed record, remove what lies between, rewind the head
        c.execute(text("DELETE FROM mlsecrets_audit WHERE seq > :cut AND seq <> :kept"),
                  {"cut": cut, "kept": checkpoint.chains[0].seq})
        c.execute(text("DELETE FROM mlsecrets_audit WHERE seq = :kept"),
                  {"kept": checkpoint.chains[0].seq})
        rehash_from(c, vid, cut + 1)
        _plant(c, 1, checkpoint.chains[0].seq)  # a record with the checkpoint's number

    tamper(env, change)
    with pytest.raises(AuditChainBroken):
        env.vault.audit.verify(env.admin, checkpoint=checkpoint)


def test_an_append_onto_a_planted_record_fails_closed_with_a_clear_error(env: Env) -> None:
    fill(env, 1)
    with engine_for(env.settings.db_url).begin() as c:
        _plant(c, 1, 3)  # the next append would be record 3
    with pytest.raises(AuditChainBroken, match="beyond its head"):
        env.vault.secrets.put(env.admin, "ml/after", b"v")


# -- several chains ------------------------------------------------------------------------
def chain_of(env: Env, action: str) -> list[int]:
    with engine_for(env.settings.db_url).connect() as c:
        return list(c.execute(text("SELECT chain FROM mlsecrets_audit WHERE action = :a"),
                              {"a": action}).scalars())


def test_an_append_takes_another_chain_while_chain_1_is_held(env: Env) -> None:
    if env.database.kind != "postgres":
        pytest.skip("SQLite serialises writers; every record lands on chain 1 there")
    env.vault.secrets.put(env.admin, "ml/key", b"v")
    holder = engine_for(env.settings.db_url).connect()
    try:
        holder.begin()
        holder.execute(text("SELECT seq FROM mlsecrets_audit_head WHERE chain = 1 FOR UPDATE"))
        # does not wait for it
        assert env.vault.secrets.read(env.admin, "ml/key", reason="in a test") == b"v"
    finally:
        holder.rollback()
        holder.close()
    assert chain_of(env, "secret.read") == [2]
    assert chain_of(env, "secret.write") == [1]
    report = env.vault.audit.verify(env.admin, all_seals=True)
    assert report.ok and report.chains == 4


def test_concurrent_writers_spread_over_chains_and_the_trail_verifies(env: Env) -> None:
    fill(env, 2)
    errors: list[str] = []

    def lookups() -> None:
        for _ in range(15):
            try:
                env.vault.secrets.read(env.admin, "ml/s0", reason="in a test")
            except Exception as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=lookups) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(chain_of(env, "secret.read")) == 60
    report = env.vault.audit.verify(env.admin, all_seals=True)
    assert report.ok and report.chains == 4


def test_a_removed_chain_is_reported(env: Env) -> None:
    fill(env, 1)
    with engine_for(env.settings.db_url).begin() as c:
        c.execute(text("DELETE FROM mlsecrets_audit_head WHERE chain = 3"))
    with pytest.raises(AuditChainBroken, match="chain 3 has no head"):
        env.vault.audit.verify(env.admin)


def test_migration_0003_gives_an_older_vault_its_other_chains(env: Env) -> None:
    fill(env, 2)
    engine = engine_for(env.settings.db_url)
    from alembic import command

    from airflow_provider_mlsecrets.store.migrate import _config

    tables = ("mlsecrets_principals", "mlsecrets_secrets")
    with engine.connect() as c:  # rows sealed since 0009 carry their generation in their MAC
        generations = {t: c.execute(text(f"SELECT id, generation FROM {t}")).all()
                       for t in tables}
    command.downgrade(_config(engine), "0002")  # the vault as revision 0002 left it
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM mlsecrets_audit_head")).scalar_one() == 1
    assert upgrade(engine) is True
    with engine.begin() as c:  # 0002 had no generations: put them back, to look at 0003 only
        for table, rows in generations.items():
            for row_id, generation in rows:
                c.execute(text(f"UPDATE {table} SET generation = :g WHERE id = :i"),
                          {"g": generation, "i": row_id})
    with engine.connect() as c:
        heads = c.execute(text("SELECT chain, seq FROM mlsecrets_audit_head ORDER BY chain")).all()
    assert [tuple(h) for h in heads] == [(1, heads[0].seq), (2, 0), (3, 0), (4, 0)]
    assert env.vault.audit.verify(env.admin, all_seals=True).ok


def test_a_verification_that_stops_early_while_batches_are_prefetched_returns(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL the next batches are fetched by a thread; a failure found early must
    stop it rather than leave verification (holding every chain head) waiting forever."""
    from airflow_provider_mlsecrets.audit import verify as verify_module

    monkeypatch.setattr(verify_module, "FETCH_BATCH", 2)
    fill(env, 12)
    tamper(env, lambda c: c.execute(text(
        "UPDATE mlsecrets_audit SET reason = 'changed' WHERE chain = 1 AND seq = 3")))
    outcome: list[object] = []

    def run(**kwargs: object) -> None:
        try:
            env.vault.audit.verify(env.admin, **kwargs)  # type: ignore[arg-type]
        except AuditChainBroken as exc:
            outcome.append(exc.seq)

    for kwargs in ({}, {"all_seals": True}):
        worker = threading.Thread(target=run, kwargs=kwargs, daemon=True)
        worker.start()
        worker.join(timeout=60)
        assert not worker.is_alive(), "verification hung"
    assert outcome == [3, 3]
    # nothing left locked
    assert env.vault.secrets.read(env.admin, "ml/s0", reason="in a test") == b"value-0"
    assert [t.name for t in threading.enumerate() if t.name == "mlsecrets-audit-fetch"] == []


def test_a_planted_chain_takes_no_record_and_is_reported(env: Env) -> None:
    fill(env, 1)
    with engine_for(env.settings.db_url).begin() as c:
        c.execute(text("INSERT INTO mlsecrets_audit_head (chain, seq, hash) VALUES "
                       "(0, 0, :h)"), {"h": genesis(vault_id(env), 0)})
    env.vault.secrets.read(env.admin, "ml/s0", reason="in a test")
    assert chain_of(env, "secret.read") == [1]
    with pytest.raises(AuditChainBroken, match="chain 0 is not one of the vault's chains"):
        env.vault.audit.verify(env.admin)
