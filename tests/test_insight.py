"""``vault.insight``, the console's read-only views, on SQLite and PostgreSQL: what each view
shows, to whom, that each call is one audited operation, and that no answer holds a value or
a token hash. The HTTP routes are exercised through the app itself."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from airflow_provider_mlsecrets.api.app import create_app
from airflow_provider_mlsecrets.errors import AccessDenied, InvalidInput
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service import Caller
from airflow_provider_mlsecrets.service._core import utcnow
from airflow_provider_mlsecrets.service.audit import AuditFilter
from airflow_provider_mlsecrets.service.insight import TEAM_TEMPLATE, team_of
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.conftest import Env

CANARY = b"canary-7f3a9c-value-that-must-never-show"
PATHS = ["ml/openai/api_key", "ml/hf/token", "teams/alpha/connections/db",
         "teams/alpha/variables/x", "teams/beta/connections/db", "connections/warehouse"]


@pytest.fixture
def vault(env: Env) -> Env:
    """Six secrets (two of team alpha, one of team beta), each holding the canary."""
    for i, path in enumerate(PATHS):
        env.vault.secrets.put(env.admin, path, CANARY + str(i).encode(),
                              owner="ml-team" if path.startswith("ml/") else "data",
                              description=f"secret number {i}")
    return env


def last_record(env: Env, action: str) -> Any:
    return env.vault.audit.tail(env.admin, 1, AuditFilter(action=action))[-1]


def no_secret_in(env: Env, answer: object) -> None:
    """The canary value and every token hash are absent from ``answer``."""
    dumped = json.dumps(answer, default=str)
    assert CANARY.decode() not in dumped
    with engine_for(env.settings.db_url).connect() as connection:
        hashes = connection.execute(text("SELECT token_hash FROM mlsecrets_principals")).all()
    for (digest,) in hashes:
        assert bytes(digest).hex() not in dumped


# -- teams ---------------------------------------------------------------------------------
def test_the_team_template_is_the_backends_default() -> None:
    from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend

    default = inspect.signature(MLSecretsBackend.__init__).parameters["team_prefix"].default
    assert default == TEAM_TEMPLATE


@pytest.mark.parametrize(("path", "team"), [
    ("teams/alpha/connections/db", "alpha"), ("teams/alpha/x", "alpha"), ("teams/alpha", None),
    ("teams", None), ("ml/teams/alpha/x", None), ("connections/teams", None)])
def test_a_secrets_team_comes_from_its_path(path: str, team: str | None) -> None:
    assert team_of(path) == team


def test_a_team_template_with_a_fixed_tail() -> None:
    assert team_of("org/t1/shared/key", "org/{team}/shared") == "t1"
    assert team_of("org/t1/other/key", "org/{team}/shared") is None


# -- inventory -------------------------------------------------------------------------------
def test_the_inventory_shows_everything_but_values_to_a_security_engineer(vault: Env) -> None:
    page = vault.vault.insight.inventory(vault.admin)
    assert page.total == len(PATHS) and page.offset == 0 and page.limit == 50
    assert [r.path for r in page.items] == sorted(PATHS)
    row = next(r for r in page.items if r.path == "teams/alpha/connections/db")
    assert row.team == "alpha" and row.owner == "data" and row.current_version == 1
    assert row.description == "secret number 2" and row.rotation_state == "none"
    assert row.age_days is not None and 0 <= row.age_days < 1 and row.intact
    assert not row.deleted and row.schedule is None and row.next_due_at is None
    assert next(r for r in page.items if r.path == "ml/hf/token").team is None
    record = last_record(vault, "insight.inventory")
    assert record.outcome == "allowed" and record.principal == "admin"
    assert "6 match, 6 shown" in record.reason
    no_secret_in(vault, [r.__dict__ for r in page.items])


def test_the_inventory_filters_sorts_and_pages(vault: Env) -> None:
    insight, admin = vault.vault.insight, vault.admin
    assert [r.path for r in insight.inventory(admin, team="alpha").items] == [
        "teams/alpha/connections/db", "teams/alpha/variables/x"]
    assert [r.path for r in insight.inventory(admin, search="OPENAI").items] == [
        "ml/openai/api_key"]
    assert insight.inventory(admin, search="ml-team").total == 2  # the owner
    assert insight.inventory(admin, search="number 5").items[0].path == "connections/warehouse"
    assert insight.inventory(admin, search="100%").total == 0  # a wildcard is a character
    first = insight.inventory(admin, limit=4)
    second = insight.inventory(admin, offset=4, limit=4)
    assert first.total == second.total == 6 and len(first.items) == 4
    assert [r.path for r in first.items + second.items] == sorted(PATHS)
    assert [r.path for r in insight.inventory(admin, sort="-path").items] == sorted(
        PATHS, reverse=True)
    assert insight.inventory(admin, sort="age").items[0].path == PATHS[0]  # written first
    assert [r.team for r in insight.inventory(admin, sort="team").items][:3] == [
        "alpha", "alpha", "beta"]
    vault.vault.secrets.delete(admin, "ml/hf/token")
    assert insight.inventory(admin).total == 5
    gone = insight.inventory(admin, deleted=True, search="hf").items
    assert [(r.path, r.deleted) for r in gone] == [("ml/hf/token", True)]
    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"sort": "value"},
                {"state": "broken"}, {"search": "x" * 257}):
        with pytest.raises(InvalidInput):
            insight.inventory(admin, **bad)  # type: ignore[arg-type]


def test_the_inventory_classifies_rotation(vault: Env) -> None:
    rotation, admin, now = vault.vault.rotation, vault.admin, utcnow()
    policy = RotationPolicy(schedule="30d", rotator="random")
    rotation.set_policy(admin, "ml/openai/api_key", policy, next_due=now + timedelta(days=3))
    rotation.set_policy(admin, "ml/hf/token", policy, next_due=now - timedelta(minutes=5))
    rotation.set_policy(admin, "connections/warehouse", policy, next_due=now - timedelta(days=2))
    states = {r.path: r for r in vault.vault.insight.inventory(vault.admin).items}
    assert states["ml/openai/api_key"].rotation_state == "ok"
    assert states["ml/openai/api_key"].schedule == "30d"
    assert states["ml/openai/api_key"].next_due_at is not None
    assert states["ml/hf/token"].rotation_state == "due"
    assert states["connections/warehouse"].rotation_state == "overdue"
    assert states["teams/beta/connections/db"].rotation_state == "none"
    rotation.rotate(admin, "ml/hf/token")  # random rotator: done at once, previous in grace
    after = {r.path: r.rotation_state for r in vault.vault.insight.inventory(admin).items}
    assert after["ml/hf/token"] == "in grace"
    overdue = vault.vault.insight.inventory(admin, state="overdue")
    assert [r.path for r in overdue.items] == ["connections/warehouse"] and overdue.total == 1
    assert vault.vault.insight.inventory(admin, sort="state").items[0].path == \
        "connections/warehouse"
    assert vault.vault.insight.inventory(admin, sort="due").items[0].path == \
        "connections/warehouse"


def test_a_viewer_sees_only_what_it_may_list(vault: Env) -> None:
    viewer = vault.principal("alice", "viewer", ("teams/alpha/**", ["list"]))
    page = vault.vault.insight.inventory(viewer)
    assert [r.path for r in page.items] == ["teams/alpha/connections/db",
                                            "teams/alpha/variables/x"]
    assert page.total == 2
    vault.vault.access.grant(vault.admin, "alice", "teams/alpha/variables/*", ["list"],
                             deny=True)
    assert [r.path for r in vault.vault.insight.inventory(viewer).items] == [
        "teams/alpha/connections/db"]
    nobody = vault.principal("bob", "viewer")
    assert vault.vault.insight.inventory(nobody).total == 0
    record = last_record(vault, "insight.inventory")
    assert record.principal == "bob" and record.outcome == "allowed"


def test_an_unauthenticated_caller_gets_no_inventory(vault: Env) -> None:
    with pytest.raises(AccessDenied):
        vault.vault.insight.inventory(Caller("mls_" + "A" * 43))
    assert last_record(vault, "insight.inventory").outcome == "denied"


def test_a_row_altered_in_the_database_is_shown_as_altered(vault: Env) -> None:
    with engine_for(vault.settings.db_url).begin() as connection:
        connection.execute(text("UPDATE mlsecrets_secrets SET current_version = 7 "
                                "WHERE path = 'ml/hf/token'"))
    rows = {r.path: r for r in vault.vault.insight.inventory(vault.admin).items}
    assert rows["ml/hf/token"].intact is False
    assert all(r.intact for p, r in rows.items() if p != "ml/hf/token")
    assert "ml/hf/token altered outside the vault" in last_record(
        vault, "insight.inventory").reason


# -- over HTTP -------------------------------------------------------------------------------
@pytest.fixture
def http(vault: Env) -> Iterator[TestClient]:
    with TestClient(create_app(lambda: vault.settings)) as client:
        yield client


def get(client: TestClient, route: str, caller: Caller, **params: Any) -> Any:
    response = client.get(f"/v1/insight/{route}", params=params,
                          headers={"authorization": f"Bearer {caller.token}"})
    return response.status_code, response.json()


def test_the_inventory_route(vault: Env, http: TestClient) -> None:
    status, body = get(http, "inventory", vault.admin, team="alpha", limit=1)
    assert status == 200
    assert body["total"] == 2 and body["limit"] == 1 and len(body["items"]) == 1
    assert body["items"][0]["path"] == "teams/alpha/connections/db"
    assert body["items"][0]["team"] == "alpha"
    no_secret_in(vault, body)
    assert get(http, "inventory", vault.admin, limit=501)[0] == 400
    assert get(http, "inventory", vault.admin, sort="nope")[0] == 400
    assert get(http, "inventory", Caller("mls_" + "B" * 43))[0] == 401
