"""Older copies of HSM-MACed rows put back by the database's owner, attacked.

The owner has no HSM, so cannot forge a row's MAC, but keeps copies: a principal before
its revocation, its grants before a deny was added, a secret before its newest version,
the critical paths before one was added, a row from before generations existed. Each copy
still carries a MAC the HSM made. ``audit verify`` (which the rotation DAG runs every run)
must find each one behind the trail (audit/freshness.py), and an untouched vault through
the same changes must still verify.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, text

from airflow_provider_mlsecrets.errors import AuditChainBroken
from airflow_provider_mlsecrets.keys import MacKey
from airflow_provider_mlsecrets.service import Caller
from airflow_provider_mlsecrets.service._integrity import _principal_bytes, grants_of
from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.models import Principal
from tests.attacks.test_small_items import Cli
from tests.attacks.test_small_items import cli as cli  # the fixture
from tests.conftest import Env


def copy_of(env: Env, table: str, where: str, **params: object) -> list[dict[str, Any]]:
    """The rows as the owner copies them (every column)."""
    with engine_for(env.settings.db_url).connect() as c:
        return [dict(r._mapping) for r in c.execute(
            text(f"SELECT * FROM {table} WHERE {where}"), params)]


def put_back(env: Env, table: str, rows: list[dict[str, Any]], where: str, key: str = "id",
             **params: object) -> None:
    """Make the rows ``where`` selects the copy again: raw SQL, outside the vault (rows the
    copy has are updated in place, the others deleted, the missing ones inserted)."""
    with engine_for(env.settings.db_url).begin() as c:
        kept = [row[key] for row in rows]
        for (found,) in c.execute(text(f"SELECT {key} FROM {table} WHERE {where}"), params):
            if found not in kept:
                c.execute(text(f"DELETE FROM {table} WHERE {key} = :k"), {"k": found})
        for row in rows:
            columns = ", ".join(f"{k} = :{k}" for k in row if k != key)
            if not c.execute(text(f"UPDATE {table} SET {columns} WHERE {key} = :{key}"),
                             row).rowcount:
                names = ", ".join(row)
                values = ", ".join(f":{k}" for k in row)
                c.execute(text(f"INSERT INTO {table} ({names}) VALUES ({values})"), row)


def replay_found(env: Env, what: str) -> str:
    with pytest.raises(AuditChainBroken) as caught:
        env.vault.audit.verify(env.admin)
    message = str(caught.value)
    assert "put back" in message and what in message, message
    return message


def test_a_revocation_undone_by_putting_the_principal_back(env: Env) -> None:
    pipeline = env.principal("pipe", "pipeline", ("ml/**", ["inject"]))
    env.vault.secrets.put(env.admin, "ml/key", b"v")
    before = copy_of(env, "mlsecrets_principals", "name = :n", n="pipe")
    env.vault.access.revoke_principal(env.admin, "pipe")
    assert env.vault.audit.verify(env.admin).ok
    put_back(env, "mlsecrets_principals", before, "name = :n", n="pipe")
    # the old row's MAC is the HSM's own: a lookup cannot tell it from the current row ...
    assert env.vault.secrets.inject(pipeline, "ml/key") == b"v"
    # ... but the trail names a newer generation of it
    replay_found(env, "principal pipe")


def test_a_deny_removed_by_putting_the_principal_and_its_grants_back(env: Env) -> None:
    env.principal("pipe", "pipeline", ("ml/**", ["inject"]))
    principal = copy_of(env, "mlsecrets_principals", "name = :n", n="pipe")
    pid = principal[0]["id"]
    grants = copy_of(env, "mlsecrets_grants", "principal_id = :p", p=pid)
    env.vault.access.grant(env.admin, "pipe", "ml/secret/**", ["inject"], deny=True)
    put_back(env, "mlsecrets_grants", grants, "principal_id = :p", p=pid)
    put_back(env, "mlsecrets_principals", principal, "name = :n", n="pipe")
    replay_found(env, "principal pipe")


def test_a_secret_pointed_back_at_its_older_version(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/key", b"old")
    before = copy_of(env, "mlsecrets_secrets", "path = :p", p="ml/key")
    env.vault.secrets.put(env.admin, "ml/key", b"new")
    with engine_for(env.settings.db_url).begin() as c:  # the row only; its versions stay
        for column in ("latest_version", "current_version", "mac", "generation"):
            c.execute(text(f"UPDATE mlsecrets_secrets SET {column} = :v WHERE path = :p"),
                      {"v": before[0][column], "p": "ml/key"})
    assert env.vault.secrets.read(env.admin, "ml/key", reason="in a test") == b"old"
    replay_found(env, "secret ml/key")


def test_a_critical_path_dropped_by_putting_the_policy_back(env: Env) -> None:
    env.vault.break_glass.set_critical(env.admin, add=("ops/**",))
    before = copy_of(env, "mlsecrets_policy", "name = :n", n="critical")
    env.vault.break_glass.set_critical(env.admin, add=("prod/**",))
    put_back(env, "mlsecrets_policy", before, "name = :n", key="name", n="critical")
    replay_found(env, "policy critical")


def test_a_row_from_before_generations_put_back(env: Env) -> None:
    """A generation-0 row with a genuine ``-v1`` MAC (as every row was before migration
    0009; made here with the HSM, as the vault made them then) is behind its trail too."""
    env.principal("pipe", "pipeline", ("ml/**", ["inject"]))
    env.vault.access.revoke_principal(env.admin, "pipe")
    core = env.vault.core
    with core.transaction() as session:
        row = session.query(Principal).filter_by(name="pipe").one()
        row.revoked_at, row.generation = None, 0
        legacy = core.keys.mac(MacKey.INTEGRITY, _principal_bytes(
            core.vault_id(session), row, grants_of(session, row)))
        session.rollback()
    with engine_for(env.settings.db_url).begin() as c:
        c.execute(text("UPDATE mlsecrets_principals SET revoked_at = NULL, generation = 0, "
                       "mac = :m WHERE name = 'pipe'"), {"m": legacy})
    replay_found(env, "principal pipe")


def test_the_same_changes_made_by_the_vault_verify(env: Env) -> None:
    """No false alarm: every change above, made through the vault, and a row changed twice
    in one operation (a grant that merges), verify."""
    env.principal("pipe", "pipeline", ("ml/**", ["inject"]))
    env.vault.access.grant(env.admin, "pipe", "ml/**", ["list"])
    env.vault.access.grant(env.admin, "pipe", "ml/secret/**", ["inject"], deny=True)
    env.vault.secrets.put(env.admin, "ml/key", b"old")
    env.vault.secrets.put(env.admin, "ml/key", b"new")
    env.vault.break_glass.set_critical(env.admin, add=("ops/**",))
    env.vault.break_glass.set_critical(env.admin, remove=("ops/**",))
    env.vault.access.revoke_principal(env.admin, "pipe")
    report = env.vault.audit.verify(env.admin, all_seals=True)
    assert report.ok, report.problems
    records = env.vault.audit.tail(env.admin, 50)
    named = [r.context.get("wrote") for r in records if r.action == "principal.revoke"]
    assert named and '["principal","pipe",' in str(named[0]), named


def test_a_caller_cannot_claim_a_generation(env: Env) -> None:
    """The context key is the vault's: a caller's context that names generations (which
    would make verification report a replay that never happened) never reaches a record."""
    forged = Caller(env.admin.token, {"component": "test",
                                      "wrote": '[["principal","admin",999]]'})
    env.vault.secrets.put(forged, "ml/key", b"v")  # seals a row: the vault's list
    env.vault.secrets.read(forged, "ml/key", reason="in a test")  # seals none: no list
    records = env.vault.audit.tail(env.admin, 5)
    wrote = {r.action: r.context.get("wrote") for r in records}
    assert "999" not in str(wrote["secret.write"]) and "ml/key" in str(wrote["secret.write"])
    assert wrote["secret.read"] is None
    assert env.vault.audit.verify(env.admin).ok


def test_the_cli_says_which_row_was_put_back_and_exits_5(cli: Cli) -> None:
    """The operator's view: ``mlsecrets audit verify`` after a revocation undone in SQL by a
    process that never touched the HSM."""
    cli.principal("pipe", "pipeline")
    engine = create_engine(cli.db_url)
    try:
        with engine.connect() as c:
            before = dict(c.execute(text(
                "SELECT revoked_at, mac, generation FROM mlsecrets_principals "
                "WHERE name = 'pipe'")).one()._mapping)
    finally:
        engine.dispose()
    cli.ok("principal", "revoke", "pipe")
    assert cli("audit", "verify").returncode == 0
    cli.sql("UPDATE mlsecrets_principals SET revoked_at = :revoked_at, mac = :mac, "
            "generation = :generation WHERE name = 'pipe'", **before)
    result = cli("audit", "verify")
    assert result.returncode == 5, result.stdout.decode() + result.stderr.decode()
    said = result.stdout.decode() + result.stderr.decode()
    assert "principal pipe is at generation" in said and "put back" in said, said
