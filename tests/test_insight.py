"""``vault.insight``, the console's read-only views, on SQLite and PostgreSQL: what each view
shows, to whom, that each call is one audited operation, and that no answer holds a value or
a token hash. The HTTP routes are exercised through the app itself."""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, literal, select, text

from airflow_provider_mlsecrets.api.app import create_app
from airflow_provider_mlsecrets.errors import AccessDenied, InvalidInput, NotFound, RotationFailed
from airflow_provider_mlsecrets.plain import plain
from airflow_provider_mlsecrets.policy.decide import Rule, decide
from airflow_provider_mlsecrets.policy.roles import Capability, Role
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service import Caller
from airflow_provider_mlsecrets.service._core import utcnow
from airflow_provider_mlsecrets.service.audit import AuditFilter
from airflow_provider_mlsecrets.service.insight import (
    TEAM_TEMPLATE,
    access_to,
    effective,
    grant_decisions,
    rules_of,
    team_of,
)
from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.models import (
    Grant,
    dag_of,
    dag_sql,
    decision_of,
    decision_sql,
)
from tests import rotator_probe
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


# -- a vault in use --------------------------------------------------------------------------
@dataclass
class Scene:
    env: Env
    pipe: Caller
    auditor: Caller
    viewer: Caller
    task: Caller


@pytest.fixture
def scene(vault: Env) -> Scene:
    """Principals of every kind, and some use: ``pipe`` injects ml/hf/token twice and is
    refused ml/openai/api_key by its deny; ``dag:train`` injects a team secret from a task."""
    admin, access = vault.admin, vault.vault.access
    pipe = vault.principal("pipe", "pipeline", ("ml/**", ["inject"]),
                           ("connections/**", ["inject", "list"]))
    access.grant(admin, "pipe", "ml/openai/**", ["inject"], deny=True)
    auditor = vault.principal("aud", "auditor")
    viewer = vault.principal("view", "viewer", ("teams/alpha/**", ["list"]))
    access.create_principal(admin, "dag:train", "pipeline")
    access.grant(admin, "dag:train", "teams/alpha/**", ["inject"])
    access.create_principal(admin, "team:beta", "pipeline")
    access.grant(admin, "team:beta", "teams/**", ["inject"])
    access.create_principal(admin, "airflow-role:op", "viewer")
    for _ in range(2):
        vault.vault.secrets.inject(pipe, "ml/hf/token")
    with pytest.raises(AccessDenied):
        vault.vault.secrets.inject(pipe, "ml/openai/api_key")
    task = Caller(None, {"component": "task", "dag_id": "train", "task_id": "fetch",
                         "run_id": "manual__1", "try_number": 1}, verified=("dag:train",))
    vault.vault.secrets.inject(task, "teams/alpha/connections/db")
    return Scene(env=vault, pipe=pipe, auditor=auditor, viewer=viewer, task=task)


def test_a_secrets_page_shows_who_can_reach_it_and_who_did(scene: Scene) -> None:
    env = scene.env
    detail = env.vault.insight.secret(scene.auditor, "ml/hf/token")
    assert detail.secret.path == "ml/hf/token" and detail.secret.intact
    assert [v.version for v in detail.versions] == [1]
    assert detail.versions[0].state == "current"
    reach = {r.principal: r for r in detail.reach}
    assert set(reach) == {"admin", "aud", "pipe"}
    assert reach["pipe"].allowed == ("inject",) and reach["pipe"].via == (
        "grant of inject on ml/**",)
    assert reach["pipe"].kind == "principal" and reach["pipe"].status == "active"
    assert reach["aud"].allowed == ("list", "audit") and reach["aud"].via == ("role auditor",)
    assert "read" in reach["admin"].allowed
    assert [(e.principal, e.action, e.outcome) for e in detail.recent[:2]] == [
        ("pipe", "secret.inject", "allowed")] * 2
    assert detail.recent[0].ts >= detail.recent[1].ts
    assert detail.rotations == [] and detail.rotation is None
    denied = {r.principal: r for r in env.vault.insight.secret(
        scene.auditor, "ml/openai/api_key").reach}
    assert denied["pipe"].allowed == () and denied["pipe"].denied == ("inject",)
    assert env.vault.insight.secret(scene.auditor, "ml/openai/api_key").recent[0].outcome == \
        "denied"
    record = last_record(env, "insight.secret")
    assert record.principal == "aud" and record.reason.endswith("; ml/openai/api_key")
    no_secret_in(env, plain(detail))


def test_a_task_is_shown_with_its_dag_and_teams_are_fenced(scene: Scene) -> None:
    detail = scene.env.vault.insight.secret(scene.auditor, "teams/alpha/connections/db")
    assert detail.recent[0].dag_id == "train" and detail.recent[0].task_id == "fetch"
    assert detail.recent[0].principal == "dag:train" and detail.recent[0].run_id == "manual__1"
    reach = {r.principal: r for r in detail.reach}
    assert reach["dag:train"].kind == "dag" and reach["dag:train"].allowed == ("inject",)
    assert "team alpha" in reach["dag:train"].note
    assert reach["team:beta"].kind == "team" and reach["team:beta"].allowed == ("inject",)
    assert reach["team:beta"].note == \
        "Airflow lookups as team:beta never reach team alpha's namespace"
    assert reach["view"].allowed == ("list",)
    assert "airflow-role:op" not in reach  # a viewer with no grant reaches nothing


def test_only_auditors_and_engineers_see_more_than_the_inventory(scene: Scene) -> None:
    insight, viewer, now = scene.env.vault.insight, scene.viewer, utcnow()
    for call in (lambda: insight.secret(viewer, "teams/alpha/connections/db"),
                 lambda: insight.principals(viewer), lambda: insight.principal(viewer, "view"),
                 lambda: insight.rotation(viewer), lambda: insight.audit(viewer, AuditFilter()),
                 lambda: insight.audit_health(viewer), lambda: insight.keys(viewer),
                 lambda: insight.activity(viewer, since=now - timedelta(hours=1)),
                 lambda: insight.reach_graph(viewer, since=now - timedelta(hours=1)),
                 lambda: insight.age_against_policy(viewer),
                 lambda: insight.audit_export(viewer, AuditFilter())):
        with pytest.raises(AccessDenied):
            call()
    refused = scene.env.vault.audit.tail(scene.env.admin, 11, AuditFilter(principal="view"))
    assert all(r.outcome == "denied" and r.action.startswith("insight.") for r in refused)
    assert {r.action for r in refused} == {
        "insight.secret", "insight.principals", "insight.principal", "insight.rotation",
        "insight.audit", "insight.audit_health", "insight.keys", "insight.activity",
        "insight.reach", "insight.age"}


def test_the_console_asks_which_views_it_may_show_without_a_denial(scene: Scene) -> None:
    """``me`` decides as the views decide (``audit`` on every path), is allowed to any
    principal, and says so in its record; a deny of ``audit`` anywhere leaves the inventory."""
    env = scene.env
    insight, access = env.vault.insight, env.vault.access
    viewer = insight.me(scene.viewer)
    assert (viewer.principal, viewer.role, viewer.audit, viewer.views) == (
        "view", "viewer", False, ("inventory",))
    record = last_record(env, "insight.me")
    assert record.principal == "view" and record.outcome == "allowed"
    assert record.reason.endswith("audit: no")
    for who in (scene.auditor, env.admin):
        assert insight.me(who).audit is True
        assert insight.me(who).views == ("overview", "inventory", "principals", "rotation",
                                         "audit", "keys", "alerts")
    assert insight.me(scene.pipe).views == ("inventory",)
    access.grant(env.admin, "aud", "teams/**", ["audit"], deny=True)
    assert insight.me(scene.auditor).audit is False
    with pytest.raises(AccessDenied):
        insight.keys(scene.auditor)  # the view refuses exactly what me says
    with pytest.raises(AccessDenied):
        insight.me(Caller("mls_" + "C" * 43))
    with TestClient(create_app(lambda: env.settings)) as client:
        assert get(client, "me", scene.viewer) == (200, {
            "principal": "view", "role": "viewer", "audit": False, "views": ["inventory"]})
        assert get(client, "me", Caller("mls_" + "C" * 43))[0] == 401


def test_principals_and_the_last_use_of_each_grant(scene: Scene) -> None:
    insight = scene.env.vault.insight
    rows = {r.name: r for r in insight.principals(scene.auditor)}
    assert set(rows) == {"admin", "aud", "view", "pipe", "dag:train", "team:beta",
                         "airflow-role:op"}
    pipe = rows["pipe"]
    assert (pipe.role, pipe.status, pipe.kind, pipe.grants, pipe.unused_grants) == (
        "pipeline", "active", "principal", 3, 1)
    assert pipe.last_seen_at is not None and pipe.last_used_at is not None
    assert rows["dag:train"].kind == "dag" and rows["dag:train"].unused_grants == 0
    assert rows["team:beta"].unused_grants == 1 and rows["team:beta"].last_used_at is None
    assert rows["airflow-role:op"].kind == "airflow-role"
    assert rows["aud"].grants == 0 and rows["aud"].unused_grants == 0
    detail = insight.principal(scene.auditor, "pipe")
    uses = {(g.pattern, g.effect): g for g in detail.grants}
    assert uses[("ml/**", "allow")].uses == 2 and not uses[("ml/**", "allow")].unused
    assert uses[("ml/**", "allow")].last_used_at is not None
    assert uses[("connections/**", "allow")].uses == 0 and uses[
        ("connections/**", "allow")].unused
    assert uses[("connections/**", "allow")].capabilities == "inject,list"
    deny = uses[("ml/openai/**", "deny")]
    assert deny.uses == 1 and not deny.unused  # the refusal it made
    assert dict(detail.reach) == {"connections/warehouse": ("inject", "list"),
                                  "ml/hf/token": ("inject",)}
    assert detail.reach_total == 2 and detail.row.unused_grants == 1
    assert len(insight.principal(scene.auditor, "admin", reach_limit=2).reach) == 2
    assert insight.principal(scene.auditor, "admin").reach_total == len(PATHS)
    with pytest.raises(NotFound):
        insight.principal(scene.auditor, "nobody")
    # a window that starts after the uses: nothing was used in it
    later = insight.principal(scene.auditor, "pipe", since=utcnow() + timedelta(seconds=1))
    assert all(g.uses == 0 and g.last_used_at is None for g in later.grants)
    no_secret_in(scene.env, plain(detail))


def test_a_grant_counts_only_what_it_decided_itself(scene: Scene) -> None:
    env = scene.env
    env.vault.access.revoke_grant(env.admin, "pipe", "ml/**")
    env.vault.access.grant(env.admin, "pipe", "ml/**", ["inject"])  # a new grant, unused
    uses = {g.pattern: g for g in env.vault.insight.principal(scene.auditor, "pipe").grants}
    assert uses["ml/**"].uses == 0 and uses["ml/**"].unused
    env.vault.access.revoke_principal(env.admin, "pipe")
    rows = {r.name: r for r in env.vault.insight.principals(scene.auditor)}
    assert rows["pipe"].status == "revoked"
    assert env.vault.insight.principal(scene.auditor, "pipe").reach == []
    assert "pipe" not in {r.principal for r in env.vault.insight.secret(
        scene.auditor, "ml/hf/token").reach}


def test_an_altered_principal_reaches_nothing(scene: Scene) -> None:
    env = scene.env
    with engine_for(env.settings.db_url).begin() as connection:
        connection.execute(text("UPDATE mlsecrets_principals SET role = 'security_engineer' "
                                "WHERE name = 'view'"))
    reach = {r.principal: r for r in env.vault.insight.secret(
        scene.auditor, "teams/alpha/connections/db").reach}
    assert reach["view"].status == "altered" and reach["view"].allowed == ()
    row = next(r for r in env.vault.insight.principals(scene.auditor) if r.name == "view")
    assert row.status == "altered"


@pytest.mark.parametrize("seed", range(3))
def test_effective_access_is_the_decision_for_every_path(seed: int) -> None:
    rng = random.Random(seed)
    segments = ["ml", "teams", "alpha", "beta", "db", "x", "api_key"]
    patterns = ["**", "ml/**", "teams/*/db", "teams/alpha/**", "**/db", "api_*", "ml/x"]
    paths = sorted({"/".join(rng.choice(segments) for _ in range(rng.randint(1, 4)))
                    for _ in range(300)})
    for role in Role:
        rules = tuple(Rule(pattern=rng.choice(patterns), deny=rng.random() < 0.3,
                           capabilities=frozenset(rng.sample(list(Capability), 2)))
                      for _ in range(rng.randint(0, 5)))
        found = effective(role, rules, paths)
        for path in paths:
            assert found[path] == access_to(role, rules, path), (role, rules, path)


def test_grant_decisions_are_worded_as_the_decision_words_them() -> None:
    allow = Grant(pattern="ml/**", effect="allow", capabilities="inject,list")
    deny = Grant(pattern="ml/x", effect="deny", capabilities="read")
    assert grant_decisions(allow) == ("allowed", ("grant of inject on ml/**",
                                                  "grant of list on ml/**"))
    rules = rules_of([allow])
    assert decide(Role.PIPELINE, rules, Capability.INJECT, "ml/a").reason in \
        grant_decisions(allow)[1]
    outcome, reasons = grant_decisions(deny)
    assert outcome == "denied"
    for path in ("ml/x", None):
        assert decide(Role.SECURITY_ENGINEER, rules_of([deny]), Capability.READ,
                      path).reason in reasons


@pytest.mark.parametrize(("context", "dag"), [
    ('{"component":"task","dag_id":"train","task_id":"t"}', "train"),
    ('{"claimed_dag_id":"forged","component":"http"}', None),
    ('{"dag_id":null}', None), ("not json", None), ("[" * 5000 + "]" * 5000, None),
    ('{"dag_id":"a.b-c_1"}', "a.b-c_1")])
def test_the_dag_and_decision_columns_never_fail(env: Env, context: str,
                                                 dag: str | None) -> None:
    with engine_for(env.settings.db_url).connect() as connection:
        assert connection.execute(select(dag_of(literal(context)))).scalar() == dag
        assert connection.execute(select(decision_of(literal(
            "grant of inject on ml/**; version 3")))).scalar() == "grant of inject on ml/**"
        assert connection.execute(select(decision_of(literal("role auditor")))).scalar() == \
            "role auditor"


# -- rotation, the trail, keys, charts ----------------------------------------------------------
@pytest.fixture(scope="session", autouse=True)
def probe_plugin(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = rotator_probe.install(tmp_path_factory.mktemp("plugins"))
    sys.path.insert(0, str(root))


def test_the_rotation_view_says_what_failed_and_why(scene: Scene, tmp_path: Path) -> None:
    env, admin, now = scene.env, scene.env.admin, utcnow()
    service = rotator_probe.ProbeService(tmp_path / "probe")
    service.accept(CANARY.decode() + "1")
    probe = RotationPolicy(schedule="30d", rotator="probe", config={"dir": str(service.dir)})
    env.vault.rotation.set_policy(admin, "ml/hf/token", probe, next_due=now - timedelta(hours=1))
    env.vault.rotation.set_policy(admin, "connections/warehouse",
                                  RotationPolicy(schedule="0 3 * * 1", rotator="random"),
                                  next_due=now + timedelta(days=2))
    (service.dir / "fail-test").write_text("the service refused it")
    with pytest.raises(RotationFailed):
        env.vault.rotation.rotate(admin, "ml/hf/token")
    rows = env.vault.insight.rotation(scene.auditor)
    assert [(r.status.path, r.state) for r in rows] == [("ml/hf/token", "failed"),
                                                        ("connections/warehouse", "ok")]
    failed = rows[0].status
    assert failed.last_result == "failed" and failed.last_error and failed.failures == 1
    assert CANARY.decode() not in failed.last_error
    detail = env.vault.insight.secret(scene.auditor, "ml/hf/token")
    assert detail.secret.rotation_state == "failed" and detail.rotation is not None
    assert [e.action for e in detail.rotations][:2] == ["rotation.fail", "rotation.set"]
    assert all(e.action.startswith("rotation.") for e in detail.rotations)
    ages = {p: (age, interval) for p, age, interval in
            env.vault.insight.age_against_policy(scene.auditor)}
    assert ages["ml/hf/token"][1] == 30.0 and ages["connections/warehouse"][1] == 7.0
    assert ages["ml/openai/api_key"][1] is None and 0 <= ages["ml/openai/api_key"][0] < 1
    assert "rotation.fail" in {r.action for r in env.vault.audit.tail(admin, 50)}


def test_the_timeline_shows_why_a_person_read(scene: Scene) -> None:
    """A read's reason (issue 17) is shown with its record; the value never is."""
    env = scene.env
    env.vault.secrets.read(env.admin, "ml/hf/token", reason="INC-9: the token expired?")
    page = env.vault.insight.audit(scene.auditor, AuditFilter(action="secret.read"), limit=1)
    (read,) = page.items
    assert read.justification == "INC-9: the token expired?" and read.outcome == "allowed"
    assert CANARY.decode() not in json.dumps(plain(page))


def test_the_audit_timeline_pages_by_key_and_filters(scene: Scene) -> None:
    env, insight, everything = scene.env, scene.env.vault.insight, AuditFilter()
    total = env.vault.audit.count(env.admin)
    first = insight.audit(scene.auditor, everything, limit=7)
    assert len(first.items) == 7 and first.next_before == (first.items[-1].chain,
                                                          first.items[-1].seq)
    seen, page = list(first.items), first
    while page.next_before is not None:
        page = insight.audit(scene.auditor, everything, before=page.next_before, limit=7)
        seen += page.items
    keys = [(e.ts, e.chain, e.seq) for e in seen]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)
    assert len(seen) >= total  # and the views' own records since
    assert first.total >= total
    denials = insight.audit(scene.auditor, AuditFilter(outcome="denied"))
    assert denials.items and all(e.outcome == "denied" for e in denials.items)
    tasks = insight.audit(scene.auditor, everything, dag_id="train")
    assert [(e.principal, e.path, e.task_id) for e in tasks.items] == [
        ("dag:train", "teams/alpha/connections/db", "fetch")]
    assert tasks.total == 1 and tasks.next_before is None
    mine = insight.audit(scene.auditor, AuditFilter(principal="pipe", path_prefix="ml/"))
    assert [e.outcome for e in mine.items] == ["denied", "allowed", "allowed"]
    later = insight.audit(scene.auditor, AuditFilter(since=utcnow() + timedelta(hours=1)))
    assert later.items == [] and later.total == 0
    with pytest.raises(InvalidInput):
        insight.audit(scene.auditor, everything, before=(1, 10**6))
    with pytest.raises(InvalidInput):
        insight.audit(scene.auditor, everything, limit=501)
    exported = insight.audit_export(scene.auditor, AuditFilter(principal="pipe"))
    assert [r.outcome for r in exported] == ["allowed", "allowed", "denied"]
    assert exported[0].request_id and exported[0].hash
    no_secret_in(env, plain(exported))


@pytest.mark.parametrize("prefix", ["ml/", "ml/h", "teams/alpha/", "teams/alpha/connections/db",
                                    "nowhere/", "m", "ml/hf/token/"])
def test_a_path_prefix_finds_exactly_what_starts_with_it(scene: Scene, prefix: str) -> None:
    """The timeline pages a prefix by an index range where it can: the same records as the
    trail's own filter, newest first."""
    want = [(r.chain, r.seq) for r in reversed(scene.env.vault.audit.tail(
        scene.env.admin, 10_000, AuditFilter(path_prefix=prefix)))]
    got, page = [], scene.env.vault.insight.audit(scene.auditor, AuditFilter(
        path_prefix=prefix), limit=2)
    got += [(e.chain, e.seq) for e in page.items]
    while page.next_before is not None:
        page = scene.env.vault.insight.audit(scene.auditor, AuditFilter(path_prefix=prefix),
                                             before=page.next_before, limit=2)
        got += [(e.chain, e.seq) for e in page.items]
    assert got == want and page.total == len(want)
    assert all(e.path.startswith(prefix) for e in page.items)


def test_audit_health_shows_heads_marks_and_the_last_verification(scene: Scene) -> None:
    env = scene.env
    before = env.vault.insight.audit_health(scene.auditor)
    assert [c["chain"] for c in before["chains"]] == [1, 2, 3, 4]
    assert before["records"] >= env.vault.audit.count(env.admin) - 1
    env.vault.audit.verify(scene.auditor)
    health = env.vault.insight.audit_health(scene.auditor)
    last = health["last_verification"]
    assert last["ok"] is True and last["principal"] == "aud" and last["outcome"] == "allowed"
    busy = [c for c in health["chains"] if c["seq"]]
    assert busy and all(c["mark"] is not None for c in busy)
    assert all(c["unmarked"] <= 2 for c in busy)  # the verification and this view's records
    assert health["vault_id"]


def test_keys_show_what_each_wraps_and_the_rewrap_left(scene: Scene) -> None:
    env = scene.env
    rows = env.vault.insight.keys(scene.auditor)
    assert len(rows) == 1 and rows[0].key.state == "current"
    assert rows[0].wraps == len(PATHS) and rows[0].pending_rewrap == 0
    assert rows[0].key.sensitive is True and rows[0].key.extractable is False
    env.vault.keys.start(env.admin)  # a new KEK; the old one still wraps everything
    rows = env.vault.insight.keys(scene.auditor)
    assert [(r.key.version, r.key.state, r.wraps, r.pending_rewrap) for r in rows] == [
        (1, "retired", len(PATHS), len(PATHS)), (2, "current", 0, 0)]


def test_activity_and_which_dag_reaches_which_secret(scene: Scene) -> None:
    insight, now = scene.env.vault.insight, utcnow()
    hours = insight.activity(scene.auditor, since=now - timedelta(hours=3))
    assert len(hours) in (4, 5) and hours[-1].start <= now
    assert all(b.start.minute == 0 for b in hours)
    assert hours[-1].allowed + hours[-2].allowed >= 3 and \
        hours[-1].denied + hours[-2].denied >= 1
    days = insight.activity(scene.auditor, since=now - timedelta(days=2), bucket="day")
    assert len(days) == 3 and sum(b.denied for b in days) >= 1
    with pytest.raises(InvalidInput):
        insight.activity(scene.auditor, since=now - timedelta(days=400))  # 9600 hours
    with pytest.raises(InvalidInput):
        insight.activity(scene.auditor, since=now, bucket="week")
    graph = insight.reach_graph(scene.auditor, since=now - timedelta(hours=1))
    assert graph == [("train", "teams/alpha/connections/db", 1)]


# -- every view over HTTP ----------------------------------------------------------------------
def test_every_insight_route_answers_an_auditor_and_refuses_a_viewer(
        scene: Scene, tmp_path: Path) -> None:
    env = scene.env
    with TestClient(create_app(lambda: env.settings)) as client:
        routes = ["secrets/ml/hf/token", "principals", "principals/pipe", "rotation",
                  "audit", "audit/health", "keys", "activity", "reach", "age",
                  "audit/export", "approvals"]
        for route in routes:
            response = client.get(f"/v1/insight/{route}",
                                  headers={"authorization": f"Bearer {scene.auditor.token}"})
            assert response.status_code == 200, (route, response.text)
            assert response.headers["cache-control"] == "no-store"
            assert CANARY.decode() not in response.text
            no_secret_in(env, response.text)
            refused = client.get(f"/v1/insight/{route}",
                                 headers={"authorization": f"Bearer {scene.viewer.token}"})
            assert refused.status_code == 403, route
        status, page = get(client, "audit", scene.auditor, dag_id="train")
        assert status == 200 and page["items"][0]["dag_id"] == "train"
        status, page = get(client, "audit", scene.auditor, limit=2)
        nxt = page["next_before"]
        status, more = get(client, "audit", scene.auditor, limit=2, before_chain=nxt[0],
                           before_seq=nxt[1])
        assert status == 200 and more["items"][0]["seq"] != page["items"][0]["seq"]
        assert get(client, "audit", scene.auditor, before_chain=1)[0] == 400
        assert get(client, "audit", scene.auditor, outcome="maybe")[0] == 400
        assert get(client, "audit", scene.auditor, since="yesterday-ish")[0] == 400
        assert get(client, "activity", scene.auditor, since="2h", bucket="day")[0] == 200
        # a date as the console sends it (pendulum parses it; the buckets are arithmetic)
        since = (datetime.now(timezone.utc) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%MZ")
        status, buckets = get(client, "activity", scene.auditor, since=since)
        assert status == 200 and len(buckets) in (4, 5)
        assert get(client, "secrets/../etc", scene.auditor)[0] in (400, 404)
        assert get(client, "principals/nobody", scene.auditor)[0] == 404
        status, reach = get(client, "reach", scene.auditor, since="1h")
        assert reach == [{"dag_id": "train", "path": "teams/alpha/connections/db",
                          "allowed": 1}]
        export = client.get("/v1/insight/audit/export", params={"principal": "pipe"},
                            headers={"authorization": f"Bearer {scene.auditor.token}"})
        lines = [json.loads(line) for line in export.text.splitlines()]
        assert [r["outcome"] for r in lines] == ["allowed", "allowed", "denied"]
        assert "attachment" in export.headers["content-disposition"]


def test_the_approvals_route_shows_what_waits_for_a_second_engineer(scene: Scene) -> None:
    """``GET /v1/insight/approvals``: the pending requests and open windows (as ``access list
    --open``), to an auditor; a viewer is refused; no value, no token hash."""
    env, admin = scene.env, scene.env.admin
    env.vault.break_glass.set_critical(admin, add=("ml/**",))
    eve = env.principal("eve", "security_engineer")
    waiting = env.vault.break_glass.request(eve, "ml/openai/api_key",
                                            "incident 42: was the key used from outside?")
    opened = env.vault.break_glass.request(eve, "ml/hf/token", "rotate by hand", "30m")
    env.vault.break_glass.approve(admin, opened.id)
    refused = env.vault.break_glass.request(eve, "ml/hf/token", "once more, please")
    env.vault.break_glass.deny(admin, refused.id)
    with TestClient(create_app(lambda: env.settings)) as client:
        response = client.get("/v1/insight/approvals",
                              headers={"authorization": f"Bearer {scene.auditor.token}"})
        assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
        rows = {r["id"]: r for r in response.json()}
        assert set(rows) == {waiting.id, opened.id}  # the denied one is closed
        assert all(set(r) == {"id", "principal", "path", "state", "window_seconds",
                              "requested_at", "decided_by", "expires_at", "justification"}
                   for r in rows.values())
        pending, approved = rows[waiting.id], rows[opened.id]
        assert (pending["principal"], pending["path"], pending["state"]) == (
            "eve", "ml/openai/api_key", "pending")
        assert pending["justification"] == "incident 42: was the key used from outside?"
        assert pending["window_seconds"] == 900 and pending["decided_by"] is None
        assert pending["expires_at"] is None and pending["requested_at"].startswith("20")
        assert (approved["state"], approved["decided_by"], approved["window_seconds"]) == (
            "approved", "admin", 1800)
        assert approved["expires_at"] > approved["requested_at"]
        no_secret_in(env, response.text)
        record = last_record(env, "access.list")
        assert record.principal == "aud" and record.outcome == "allowed"
        assert record.reason.endswith("2 shown")
        assert get(client, "approvals", scene.viewer)[0] == 403
        assert last_record(env, "access.list").outcome == "denied"
        assert get(client, "approvals", Caller("mls_" + "C" * 43))[0] == 401


# -- indexes ---------------------------------------------------------------------------------
def test_the_migration_indexes_exactly_what_the_queries_compute() -> None:
    migration = importlib.import_module(
        "airflow_provider_mlsecrets.store.migrations.versions.0006_insight_indexes")
    for dialect in ("sqlite", "postgresql"):
        assert migration.DECISION[dialect] == decision_sql("reason", dialect)
        assert migration.DAG[dialect] == dag_sql("context", dialect)
    from airflow_provider_mlsecrets.service.insight import _PG_NEWEST  # the batched seeks
    assert f"{decision_sql('a.reason', 'postgresql')} = q.d" in _PG_NEWEST.text


FULL_SCAN = re.compile(r"^SCAN mlsecrets_audit$|Seq Scan on mlsecrets_audit ")


def test_the_views_read_the_trail_through_its_indexes(scene: Scene) -> None:
    """Every statement a view sends that reads the trail is planned on an index, never a
    scan of the whole table (PostgreSQL is told to avoid scans where it can, so a plan that
    still scans means no index fits)."""
    env, insight, auditor, now = scene.env, scene.env.vault.insight, scene.auditor, utcnow()
    engine = engine_for(env.settings.db_url)
    sent: list[tuple[str, Any]] = []

    def listen(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and \
                re.search(r"FROM mlsecrets_audit\b(?!_)", statement):
            sent.append((statement, parameters))

    expected = {
        "principal": (lambda: insight.principal(auditor, "pipe"), "ix_mlsecrets_audit_grant_use"),
        "principals": (lambda: insight.principals(auditor), "ix_mlsecrets_audit_grant_use"),
        "secret": (lambda: insight.secret(auditor, "ml/hf/token"),
                   "ix_mlsecrets_audit_path_time"),
        "timeline": (lambda: insight.audit(auditor, AuditFilter()), "ix_mlsecrets_audit_time"),
        "dag": (lambda: insight.audit(auditor, AuditFilter(), dag_id="train"),
                "ix_mlsecrets_audit_dag"),
        "principal timeline": (lambda: insight.audit(auditor, AuditFilter(principal="pipe")),
                               "ix_mlsecrets_audit_principal_time"),
        "denials": (lambda: insight.audit(auditor, AuditFilter(outcome="denied")),
                    "ix_mlsecrets_audit_outcome_time"),
        "health": (lambda: insight.audit_health(auditor), "ix_mlsecrets_audit_action"),
        "activity": (lambda: insight.activity(auditor, since=now - timedelta(hours=2)),
                     "ix_mlsecrets_audit_outcome_time"),
        "reach": (lambda: insight.reach_graph(auditor, since=now - timedelta(hours=2)), ""),
    }
    event.listen(engine, "before_cursor_execute", listen)
    try:
        for name, (call, index) in expected.items():
            sent.clear()
            call()
            assert sent, name
            plans = []
            with engine.connect() as connection:
                if env.database.kind == "postgres":
                    connection.exec_driver_sql("SET enable_seqscan = off")
                    prefix = "EXPLAIN "
                else:
                    prefix = "EXPLAIN QUERY PLAN "
                for statement, parameters in sent:
                    rows = connection.exec_driver_sql(prefix + statement, parameters).all()
                    plans += [str(row[-1]) for row in rows]
            assert not [p for p in plans if FULL_SCAN.search(p.strip())], (name, plans)
            assert index in "\n".join(plans), (name, plans)
    finally:
        event.remove(engine, "before_cursor_execute", listen)
