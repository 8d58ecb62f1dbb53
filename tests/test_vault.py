"""The vault service on SQLite and PostgreSQL with a real SoftHSM2 token."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from airflow_provider_mlsecrets.errors import (
    AccessDenied,
    AuditError,
    IntegrityError,
    InvalidInput,
    NotFound,
    PolicyError,
    VersionConflict,
)
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.models import Secret, SecretVersion
from tests.conftest import Env, make_settings


def records(env: Env, n: int = 50) -> list[tuple[str, str, str, str]]:
    return [(r.principal, r.action, r.path, r.outcome) for r in env.vault.audit.tail(env.admin, n)]


def test_put_read_versions_and_states(env: Env) -> None:
    s = env.vault.secrets
    assert s.put(env.admin, "ml/db/password", b"one").version == 1
    assert s.put(env.admin, "ml/db/password", b"two", description="warehouse").version == 2
    s.put(env.admin, "ml/db/password", b"three")
    assert s.read(env.admin, "ml/db/password", reason="in a test") == b"three"
    assert s.read(env.admin, "ml/db/password", version=1, reason="in a test") == b"one"
    states = [(v.version, v.state) for v in s.versions(env.admin, "ml/db/password")]
    assert states == [(1, "retired"), (2, "previous"), (3, "current")]
    [info] = s.list(env.admin, "ml/")
    assert (info.path, info.current_version, info.description) == ("ml/db/password", 3, "warehouse")


def test_check_and_set(env: Env) -> None:
    s = env.vault.secrets
    s.put(env.admin, "a/b", b"v1", cas=0)
    with pytest.raises(VersionConflict, match="newest version is 1, not 0"):
        s.put(env.admin, "a/b", b"v2", cas=0)
    s.put(env.admin, "a/b", b"v2", cas=1)
    with pytest.raises(VersionConflict):
        s.put(env.admin, "a/b", b"v3", cas=1)
    assert s.read(env.admin, "a/b", reason="in a test") == b"v2"


def test_soft_delete_and_undelete(env: Env) -> None:
    s = env.vault.secrets
    s.put(env.admin, "a/b", b"v1")
    s.delete(env.admin, "a/b")
    with pytest.raises(NotFound, match="deleted"):
        s.read(env.admin, "a/b", reason="in a test")
    with pytest.raises(InvalidInput, match="undelete"):
        s.put(env.admin, "a/b", b"v2")
    assert s.list(env.admin) == []
    assert [i.path for i in s.list(env.admin, include_deleted=True)] == ["a/b"]
    s.undelete(env.admin, "a/b")
    assert s.read(env.admin, "a/b", reason="in a test") == b"v1"


def test_destroy_erases_the_crypto_and_keeps_the_metadata(env: Env) -> None:
    s = env.vault.secrets
    s.put(env.admin, "a/b", b"v1")
    s.put(env.admin, "a/b", b"v2")
    s.destroy(env.admin, "a/b", 1)
    with pytest.raises(NotFound, match="destroyed"):
        s.read(env.admin, "a/b", version=1, reason="in a test")
    assert s.read(env.admin, "a/b", reason="in a test") == b"v2"
    with engine_for(env.settings.db_url).connect() as c:
        row = c.execute(select(SecretVersion).where(SecretVersion.version == 1)).one()
    assert (row.wrapped_key, row.nonce, row.ciphertext) == (None, None, None)
    assert row.state == "destroyed"
    assert row.created_by == "admin" and row.destroyed_at is not None
    with pytest.raises(NotFound):
        s.destroy(env.admin, "a/b", 7)


def test_only_the_configured_number_of_versions_is_kept(hsm, tmp_path, database) -> None:  # type: ignore[no-untyped-def]
    vault = Vault(make_settings(hsm, tmp_path, database.url, max_versions=2))
    admin = Caller(vault.initialise().admin_token)
    for i in range(4):
        vault.secrets.put(admin, "a/b", f"v{i}".encode())
    states = [(v.version, v.state) for v in vault.secrets.versions(admin, "a/b")]
    assert states == [(1, "destroyed"), (2, "destroyed"), (3, "previous"), (4, "current")]


@pytest.mark.parametrize("value", [b"x" * (64 * 1024 + 1)])
def test_bad_values_are_refused_and_change_nothing(env: Env, value: bytes) -> None:
    with pytest.raises(InvalidInput):
        env.vault.secrets.put(env.admin, "a/b", value)
    with pytest.raises(NotFound):
        env.vault.secrets.read(env.admin, "a/b", reason="in a test")


def test_a_value_at_the_limit_is_accepted(env: Env) -> None:
    env.vault.secrets.put(env.admin, "a/b", b"\x00\xff" * (32 * 1024))
    assert env.vault.secrets.read(env.admin, "a/b", reason="in a test") == b"\x00\xff" * (32 * 1024)


def test_access_matrix_deny_by_default(env: Env) -> None:
    s = env.vault.secrets
    s.put(env.admin, "ml/train/key", b"k")
    s.put(env.admin, "other/key", b"o")
    pipeline = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    viewer = env.principal("bob", "viewer", ("ml/**", ["list"]))
    auditor = env.principal("aud", "auditor")
    assert s.inject(pipeline, "ml/train/key") == b"k"
    for caller, call in [
        # read is never a pipeline's
        (pipeline, lambda c: s.read(c, "ml/train/key", reason="in a test")),
        (pipeline, lambda c: s.inject(c, "other/key")),         # not granted
        (pipeline, lambda c: s.put(c, "ml/train/key", b"x")),
        (viewer, lambda c: s.read(c, "ml/train/key", reason="in a test")),
        (viewer, lambda c: s.inject(c, "ml/train/key")),
        (auditor, lambda c: s.read(c, "ml/train/key", reason="in a test")),
        (auditor, lambda c: env.vault.access.create_principal(c, "x", "viewer")),
    ]:
        with pytest.raises(AccessDenied):
            call(caller)
    assert [i.path for i in s.list(viewer)] == ["ml/train/key"]
    assert {i.path for i in s.list(auditor)} == {"ml/train/key", "other/key"}
    assert env.vault.audit.tail(auditor, 1)
    with pytest.raises(AccessDenied):
        env.vault.audit.tail(viewer)
    denied = [r for r in records(env) if r[3] == "denied"]
    assert ("etl", "secret.read", "ml/train/key", "denied") in denied
    assert ("etl", "secret.inject", "other/key", "denied") in denied
    assert ("bob", "audit.tail", "", "denied") in denied
    assert len(denied) == 8


def test_explicit_deny_wins_over_any_allow(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/prod/key", b"p")
    env.vault.secrets.put(env.admin, "ml/dev/key", b"d")
    pipeline = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    env.vault.access.grant(env.admin, "etl", "ml/prod/**", ["inject"], deny=True)
    assert env.vault.secrets.inject(pipeline, "ml/dev/key") == b"d"
    with pytest.raises(AccessDenied, match="explicit deny"):
        env.vault.secrets.inject(pipeline, "ml/prod/key")
    # a deny binds a security engineer too
    env.vault.access.create_principal(env.admin, "se2", "security_engineer")
    env.vault.access.grant(env.admin, "se2", "ml/prod/**", ["read"], deny=True)


def test_grants_beyond_a_roles_ceiling_are_refused(env: Env) -> None:
    env.principal("etl", "pipeline")
    with pytest.raises(PolicyError, match="can never hold read"):
        env.vault.access.grant(env.admin, "etl", "ml/**", ["read"])
    with pytest.raises(PolicyError, match="unknown capability"):
        env.vault.access.grant(env.admin, "etl", "ml/**", ["reed"])
    with pytest.raises(PolicyError, match="unknown role"):
        env.vault.access.create_principal(env.admin, "x", "root")


def test_revoke_grant_and_policy_show(env: Env) -> None:
    pipeline = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    env.vault.secrets.put(env.admin, "ml/k", b"v")
    shown = {(g.principal, g.effect, g.pattern, g.capabilities)
             for g in env.vault.access.policy(env.admin)}
    assert ("etl", "allow", "ml/**", "inject") in shown
    everything = "read,inject,write,delete,destroy,list,rotate,grant,audit"
    assert ("admin", "role", "**", everything) in shown
    assert env.vault.access.revoke_grant(env.admin, "etl", "ml/**") == 1
    with pytest.raises(AccessDenied):
        env.vault.secrets.inject(pipeline, "ml/k")


@pytest.mark.parametrize("token", [None, "", "garbage", "mls_" + "A" * 43])
def test_bad_tokens_are_denied_and_recorded(env: Env, token: str | None) -> None:
    env.vault.secrets.put(env.admin, "a/b", b"v")
    with pytest.raises(AccessDenied):
        env.vault.secrets.read(Caller(token), "a/b", reason="in a test")
    assert records(env)[-1] == ("<unauthenticated>", "secret.read", "a/b", "denied")


def test_revoked_and_expired_tokens_are_denied(env: Env) -> None:
    env.vault.secrets.put(env.admin, "a/b", b"v")
    se = env.principal("se2", "security_engineer")
    assert env.vault.secrets.read(se, "a/b", reason="in a test") == b"v"
    env.vault.access.revoke_principal(env.admin, "se2")
    with pytest.raises(AccessDenied, match="revoked"):
        env.vault.secrets.read(se, "a/b", reason="in a test")
    expiry = datetime.now(timezone.utc) + timedelta(seconds=1)
    soon = Caller(env.vault.access.create_principal(env.admin, "temp", "security_engineer",
                                                    expiry))
    assert env.vault.secrets.read(soon, "a/b", reason="in a test") == b"v"
    time.sleep(max(0.0, (expiry - datetime.now(timezone.utc)).total_seconds()) + 0.05)
    with pytest.raises(AccessDenied, match="expired"):
        env.vault.secrets.read(soon, "a/b", reason="in a test")
    with pytest.raises(InvalidInput, match="past"):
        env.vault.access.create_principal(env.admin, "old", "viewer",
                                          datetime.now(timezone.utc) - timedelta(days=1))


def test_tokens_are_stored_only_as_keyed_hashes(env: Env) -> None:
    token = env.vault.access.create_principal(env.admin, "etl", "pipeline")
    with engine_for(env.settings.db_url).connect() as c:
        rows = c.execute(text("SELECT token_hash FROM mlsecrets_principals"))
        stored = [bytes(r[0]) for r in rows]
    assert all(len(h) == 32 for h in stored)
    assert all(token.encode() not in h for h in stored)
    import hashlib

    assert hashlib.sha256(token.encode()).digest() not in stored


def test_swapped_ciphertexts_fail_closed_and_never_return_the_other_secret(env: Env) -> None:
    s = env.vault.secrets
    s.put(env.admin, "ml/a", b"secret-a")
    s.put(env.admin, "ml/b", b"secret-b")
    with env.vault.core.transaction() as session:
        a, b = session.scalars(select(SecretVersion).order_by(SecretVersion.id)).all()
        for column in ("wrapped_key", "ciphertext", "nonce"):
            va, vb = getattr(a, column), getattr(b, column)
            setattr(a, column, vb)
            setattr(b, column, va)
    for path in ("ml/a", "ml/b"):
        with pytest.raises(IntegrityError):
            s.read(env.admin, path, reason="in a test")
    assert records(env)[-1][1:] == ("secret.read", "ml/b", "error")


@pytest.mark.parametrize("column", ["wrapped_key", "ciphertext"])
def test_swapping_one_column_between_versions_fails(env: Env, column: str) -> None:
    s = env.vault.secrets
    s.put(env.admin, "ml/a", b"first")
    s.put(env.admin, "ml/a", b"second")
    with env.vault.core.transaction() as session:
        one, two = session.scalars(select(SecretVersion).order_by(SecretVersion.version)).all()
        v1, v2 = getattr(one, column), getattr(two, column)
        setattr(one, column, v2)
        setattr(two, column, v1)
    for version in (1, 2):
        with pytest.raises(IntegrityError):
            s.read(env.admin, "ml/a", version=version, reason="in a test")


def test_no_audit_record_means_no_secret_and_no_change(env: Env) -> None:
    s = env.vault.secrets
    s.put(env.admin, "ml/a", b"v1")
    # Break the audit chain head: every append now fails inside the action's transaction.
    with env.vault.core.transaction() as session:
        session.execute(text("DELETE FROM mlsecrets_audit_head"))
    with pytest.raises(AuditError):
        s.read(env.admin, "ml/a", reason="in a test")
    with pytest.raises(AuditError):
        s.put(env.admin, "ml/a", b"v2")
    with engine_for(env.settings.db_url).connect() as c:
        assert c.execute(select(Secret.latest_version)).scalar_one() == 1
        assert c.execute(select(SecretVersion.version)).scalars().all() == [1]


def test_not_found_is_recorded(env: Env) -> None:
    with pytest.raises(NotFound):
        env.vault.secrets.read(env.admin, "no/such", reason="in a test")
    assert records(env)[-1] == ("admin", "secret.read", "no/such", "not_found")


def test_initialise_is_idempotent_and_keeps_tokens(env: Env) -> None:
    again = env.vault.initialise()
    assert not again.changed and again.admin_token is None
    env.vault.secrets.put(env.admin, "a/b", b"v")  # the first token still works
    fresh = Vault(env.settings)  # a new process's view of the same vault
    assert fresh.secrets.read(env.admin, "a/b", reason="in a test") == b"v"


def test_status_and_keys(env: Env) -> None:
    status = env.vault.status(env.admin)
    assert status["current_kek"] == f"{env.settings.key_prefix}-kek-1"
    assert status["you"] == "admin (security_engineer)"
    env.vault.secrets.put(env.admin, "a/b", b"v")
    [key] = env.vault.key_list(env.admin)
    assert (key.state, key.versions_wrapped, key.sensitive, key.extractable) == (
        "current", 1, True, False)
    viewer = env.principal("v", "viewer")
    assert env.vault.status(viewer)["you"] == "v (viewer)"
    with pytest.raises(AccessDenied):
        env.vault.key_list(viewer)


def test_audit_records_never_hold_the_value(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/canary", b"CANARY-4f1d2a")
    env.vault.secrets.read(env.admin, "ml/canary", reason="in a test")
    with engine_for(env.settings.db_url).connect() as c:
        for row in c.execute(text("SELECT * FROM mlsecrets_audit")):
            assert "CANARY-4f1d2a" not in repr(tuple(row))


def test_a_stale_cas_write_loses_cleanly(env: Env) -> None:
    env.vault.secrets.put(env.admin, "a/b", b"v1")
    with pytest.raises(VersionConflict):
        env.vault.secrets.put(env.admin, "a/b", b"v2", cas=5)


def test_the_last_security_engineer_cannot_be_revoked(env: Env) -> None:
    with pytest.raises(InvalidInput, match="last active security engineer"):
        env.vault.access.revoke_principal(env.admin, "admin")
    env.vault.access.create_principal(env.admin, "se2", "security_engineer")
    env.vault.access.revoke_principal(env.admin, "admin")
    with pytest.raises(AccessDenied, match="revoked"):
        env.vault.status(env.admin)


def test_init_is_the_break_glass_when_no_engineer_is_active(env: Env) -> None:
    with env.vault.core.transaction() as session:
        session.execute(text("UPDATE mlsecrets_principals SET expires_at = :t"),
                        {"t": datetime.now(timezone.utc) - timedelta(seconds=1)})
    result = env.vault.initialise("recovery")
    assert result.admin_name == "recovery" and result.admin_token is not None
    assert env.vault.status(Caller(result.admin_token))["you"] == "recovery (security_engineer)"
    init_record = env.vault.audit.tail(Caller(result.admin_token), 2)[0]
    assert init_record.action == "vault.init" and "principal recovery" in init_record.reason


@pytest.mark.parametrize("statement", [
    "UPDATE mlsecrets_principals SET role = 'security_engineer' WHERE name = 'etl'",
    "DELETE FROM mlsecrets_grants WHERE effect = 'deny'",
    "UPDATE mlsecrets_grants SET pattern = '**' WHERE effect = 'allow'",
    "UPDATE mlsecrets_principals SET revoked_at = NULL WHERE name = 'etl'",
])
def test_policy_rows_changed_in_the_database_are_refused(env: Env, statement: str) -> None:
    env.vault.secrets.put(env.admin, "ml/prod/key", b"p")
    etl = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    env.vault.access.grant(env.admin, "etl", "ml/prod/**", ["inject"], deny=True)
    if "revoked_at" in statement:
        env.vault.access.revoke_principal(env.admin, "etl")
    with env.vault.core.transaction() as session:
        session.execute(text(statement))
    with pytest.raises(IntegrityError, match="altered outside the vault"):
        env.vault.secrets.inject(etl, "ml/prod/key")
    assert records(env)[-1] == ("<unauthenticated>", "secret.inject", "ml/prod/key", "denied")


def test_a_secret_pointed_back_at_an_old_version_is_refused(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/key", b"old-compromised")
    env.vault.secrets.put(env.admin, "ml/key", b"new")
    with env.vault.core.transaction() as session:
        session.execute(text("UPDATE mlsecrets_secrets SET current_version = 1"))
    with pytest.raises(IntegrityError, match="ml/key was altered"):
        env.vault.secrets.read(env.admin, "ml/key", reason="in a test")


def test_inject_of_a_missing_path_is_not_found_even_without_a_grant(env: Env) -> None:
    env.vault.secrets.put(env.admin, "other/exists", b"v")
    etl = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    with pytest.raises(NotFound):
        env.vault.secrets.inject(etl, "other/missing")
    with pytest.raises(AccessDenied):
        env.vault.secrets.inject(etl, "other/exists")
    with pytest.raises(AccessDenied):  # read never reveals whether a path exists
        env.vault.secrets.read(etl, "other/missing", reason="in a test")
    assert records(env)[-3:] == [("etl", "secret.inject", "other/missing", "not_found"),
                                 ("etl", "secret.inject", "other/exists", "denied"),
                                 ("etl", "secret.read", "other/missing", "denied")]


def test_sealed_values_open_only_at_their_path_for_inject(env: Env) -> None:
    from airflow_provider_mlsecrets.crypto.sealed import PREFIX

    token = env.vault.secrets.seal(env.admin, "ml/sealed/key", b"sealed-canary-value")
    assert token.startswith(PREFIX) and b"sealed-canary-value" not in token.encode()
    etl = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    assert env.vault.secrets.unseal(etl, "ml/sealed/key", token) == b"sealed-canary-value"
    with pytest.raises(IntegrityError):
        env.vault.secrets.unseal(etl, "ml/sealed/other", token)  # pasted under another path
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    for bad in (flipped, token[:-4], PREFIX + "AAAA", "garbage"):
        with pytest.raises(IntegrityError):
            env.vault.secrets.unseal(etl, "ml/sealed/key", bad)
    with pytest.raises(AccessDenied):
        env.vault.secrets.seal(etl, "ml/sealed/key", b"x")  # sealing needs write
    viewer = env.principal("v", "viewer", ("ml/**", ["list"]))
    with pytest.raises(AccessDenied):
        env.vault.secrets.unseal(viewer, "ml/sealed/key", token)
    # a stored secret's version never opens as a sealed token, and nothing was stored
    assert env.vault.secrets.list(env.admin) == []
    outcomes = [(r[1], r[3]) for r in records(env)]
    assert ("secret.unseal", "error") in outcomes and ("secret.seal", "denied") in outcomes


def test_a_fenced_security_engineer_cannot_delegate_around_the_fence(env: Env) -> None:
    env.vault.secrets.put(env.admin, "prod/db", b"PROD-CANARY")
    eve = env.principal("eve", "security_engineer")
    env.vault.access.grant(env.admin, "eve", "prod/**", ["read", "inject"], deny=True)
    with pytest.raises(AccessDenied, match="explicit deny"):
        env.vault.secrets.read(eve, "prod/db", reason="in a test")
    with pytest.raises(AccessDenied, match="fenced"):
        env.vault.access.create_principal(eve, "evebot", "pipeline")
    with pytest.raises(AccessDenied, match="fenced"):
        env.vault.access.grant(eve, "eve", "dev/**", ["inject"])


def test_inject_refuses_names_it_holds_but_cannot_serve(env: Env) -> None:
    etl = env.principal("etl", "pipeline", ("connections/**", ["inject"]))
    env.vault.secrets.put(env.admin, "connections/billing_db", b"vault-value")
    with pytest.raises(AccessDenied, match="only in case"):
        env.vault.secrets.inject(etl, "connections/BILLING_DB")
    env.vault.secrets.delete(env.admin, "connections/billing_db")
    with pytest.raises(AccessDenied, match="cannot be served"):
        env.vault.secrets.inject(etl, "connections/billing_db")
    with pytest.raises(NotFound):  # a person reading gets the plain answer
        env.vault.secrets.read(env.admin, "connections/billing_db", reason="in a test")
    env.vault.secrets.undelete(env.admin, "connections/billing_db")
    with env.vault.core.transaction() as session:  # marked destroyed, data left in place
        session.execute(text("UPDATE mlsecrets_secret_versions SET state = 'destroyed'"))
    with pytest.raises(IntegrityError, match="marked destroyed"):
        env.vault.secrets.inject(etl, "connections/billing_db")


def test_a_sealed_token_naming_another_key_fails_opaquely(env: Env) -> None:
    import base64

    from airflow_provider_mlsecrets import canonical
    from airflow_provider_mlsecrets.crypto.sealed import PREFIX

    token = env.vault.secrets.seal(env.admin, "ml/k", b"value")
    body = token[len(PREFIX):]
    fields = canonical.decode(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    for label in (b"other-kek-9", b"evil\nlabel"):
        forged = PREFIX + base64.urlsafe_b64encode(canonical.encode(
            fields[0], label, *fields[2:])).decode().rstrip("=")
        with pytest.raises(IntegrityError) as info:
            env.vault.secrets.unseal(env.admin, "ml/k", forged)
        assert str(info.value) == "the data could not be authenticated"


def test_a_revoked_token_learns_nothing_about_what_exists(env: Env) -> None:
    etl = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    env.vault.access.revoke_principal(env.admin, "etl")
    for path in ("ml/missing", "other/missing"):
        with pytest.raises(AccessDenied, match="revoked"):
            env.vault.secrets.inject(etl, path)


def test_an_empty_value_is_a_value(env: Env) -> None:
    """Airflow variables may be empty; one must be able to move to the vault and come back
    empty, not missing (issue 15)."""
    env.vault.secrets.put(env.admin, "variables/blank", b"")
    assert env.vault.secrets.read(env.admin, "variables/blank", reason="in a test") == b""
    assert env.vault.secrets.inject(env.admin, "variables/blank") == b""
