"""The secret-rotation engine on SQLite and PostgreSQL, through a rotator plugin found by its
entry point: the four steps, failures that leave ``current`` alone, a process killed between
every pair of steps, two rotations of one secret at once, the grace period, retention, and
the audit trail of every step."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from airflow_provider_mlsecrets.errors import (
    IntegrityError,
    InvalidInput,
    RotationBusy,
    RotationFailed,
    VersionConflict,
)
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.rotation.registry import available
from airflow_provider_mlsecrets.service import Vault
from airflow_provider_mlsecrets.service._core import utcnow
from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.models import Rotation, Secret, SecretVersion
from tests import rotator_probe
from tests.conftest import Env, run_forked
from tests.rotator_probe import ProbeService

PATH = "ml/api/key"


@pytest.fixture(scope="session", autouse=True)
def probe_plugin(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = rotator_probe.install(tmp_path_factory.mktemp("plugins"))
    sys.path.insert(0, str(root))


@pytest.fixture
def service(tmp_path: Path) -> ProbeService:
    return ProbeService(tmp_path / "probe")


def policy(service: ProbeService, **kw: str) -> RotationPolicy:
    return RotationPolicy(schedule=kw.pop("schedule", "30d"), rotator="probe",
                          config={"dir": str(service.dir)}, **kw)


def start(env: Env, service: ProbeService, **kw: str) -> bytes:
    """A secret whose value the probe service accepts, under a rotation policy."""
    env.vault.secrets.put(env.admin, PATH, b"initial-value")
    service.accept("initial-value")
    env.vault.rotation.set_policy(env.admin, PATH, policy(service, **kw))
    return b"initial-value"


def states(env: Env) -> dict[int, str]:
    return {v.version: v.state for v in env.vault.secrets.versions(env.admin, PATH)}


def test_shipped_rotators_are_entry_points() -> None:
    assert {"random", "postgres", "http", "airflow_connection", "probe"} <= set(available())


def test_a_rotation_runs_four_audited_steps(env: Env, service: ProbeService) -> None:
    start(env, service, grace="1h")
    result = env.vault.rotation.rotate(env.admin, PATH)
    assert (result.result, result.version, result.previous, result.steps) == (
        "rotated", 2, 1, ("create", "set", "test", "finish"))
    new = env.vault.secrets.read(env.admin, PATH, reason="in a test")
    assert new != b"initial-value" and service.valid(new)
    assert service.valid("initial-value")  # the grace period has not passed
    assert states(env) == {1: "previous", 2: "current"}
    actions = [r.action for r in env.vault.audit.tail(env.admin, 20)
               if r.action.startswith("rotation.")]
    assert actions[-5:] == ["rotation.begin", "rotation.create", "rotation.set",
                            "rotation.test", "rotation.finish"]
    status = env.vault.rotation.show(env.admin, PATH)
    assert (status.rotations, status.last_result, status.step, status.previous_version) == (
        1, "rotated", "idle", 1)
    assert status.next_due_at - utcnow() > timedelta(days=29)


def test_the_previous_value_is_invalidated_after_the_grace_period(
        env: Env, service: ProbeService) -> None:
    start(env, service, grace="1s")
    env.vault.rotation.rotate(env.admin, PATH)
    assert env.vault.rotation.rotate(env.admin, PATH, only_if_due=True).result == "not due"
    time.sleep(1.1)
    assert env.vault.rotation.due(env.admin) == [PATH]
    result = env.vault.rotation.rotate(env.admin, PATH, only_if_due=True)
    assert (result.result, result.steps) == ("invalidated", ("invalidate",))
    assert not service.valid("initial-value")
    assert service.valid(env.vault.secrets.read(env.admin, PATH, reason="in a test"))
    assert states(env) == {1: "retired", 2: "current"}
    assert env.vault.rotation.due(env.admin) == []


def test_rotating_within_the_grace_period_invalidates_the_previous_value_first(
        env: Env, service: ProbeService) -> None:
    start(env, service, grace="1h")
    env.vault.rotation.rotate(env.admin, PATH)
    second = env.vault.secrets.read(env.admin, PATH, reason="in a test")
    result = env.vault.rotation.rotate(env.admin, PATH)
    assert result.steps == ("invalidate", "create", "set", "test", "finish")
    assert not service.valid("initial-value") and service.valid(second)
    assert states(env) == {1: "retired", 2: "previous", 3: "current"}


def test_retired_versions_are_destroyed_after_retention(env: Env, service: ProbeService) -> None:
    start(env, service, grace="1s", retention="1s")
    env.vault.rotation.rotate(env.admin, PATH)
    env.vault.rotation.rotate(env.admin, PATH)
    time.sleep(1.1)
    assert env.vault.rotation.retain(env.admin) == [f"{PATH} v1"]
    assert states(env)[1] == "destroyed"


@pytest.mark.parametrize("step", ["create", "set", "test"])
def test_a_failing_step_leaves_current_alone_and_the_next_run_resumes(
        env: Env, service: ProbeService, step: str) -> None:
    start(env, service)
    service.fail(step)
    with pytest.raises(RotationFailed, match=f"failed at {step}") as caught:
        env.vault.rotation.rotate(env.admin, PATH)
    assert env.vault.secrets.read(env.admin, PATH, reason="in a test") == b"initial-value"
    status = env.vault.rotation.show(env.admin, PATH)
    assert (status.last_result, status.failures, status.running) == ("failed", 1, False)
    # the probe's message echoes the value; neither the error nor the record may hold it
    pending = status.pending_version and env.vault.secrets.read(
        env.admin, PATH, status.pending_version, reason="in a test")
    for text in (str(caught.value), status.last_error or ""):
        assert "refused value ***" in text or step == "create"
        if pending:
            assert pending.decode() not in text
    record = [r for r in env.vault.audit.tail(env.admin, 30) if r.action == "rotation.fail"][-1]
    assert record.outcome == "error" and (not pending or pending.decode() not in record.reason)
    service.fail(step, on=False)
    result = env.vault.rotation.rotate(env.admin, PATH)
    assert result.result == "rotated"
    assert service.calls()["create"] == (2 if step == "create" else 1)  # the value was kept
    value = env.vault.secrets.read(env.admin, PATH, reason="in a test")
    assert service.valid(value) and value != b"initial-value"
    assert [s for s in states(env).values() if s == "current"] == ["current"]


def test_a_write_during_a_half_done_rotation_is_refused_and_cancel_rolls_back(
        env: Env, service: ProbeService) -> None:
    start(env, service)
    service.fail("test")
    with pytest.raises(RotationFailed):
        env.vault.rotation.rotate(env.admin, PATH)
    with pytest.raises(VersionConflict, match="half done"):
        env.vault.secrets.put(env.admin, PATH, b"manual")
    env.vault.rotation.cancel(env.admin, PATH)
    assert states(env) == {1: "current", 2: "destroyed"}
    assert env.vault.rotation.show(env.admin, PATH).step == "idle"
    env.vault.secrets.put(env.admin, PATH, b"manual")
    assert env.vault.secrets.read(env.admin, PATH, reason="in a test") == b"manual"


def _kill_after(settings_dict: dict[str, object], token: str, step: str) -> str:
    from airflow_provider_mlsecrets.service import Caller
    from airflow_provider_mlsecrets.settings import Settings

    vault = Vault(Settings(**settings_dict))  # type: ignore[arg-type]

    def die(done: str) -> None:
        if done == step:
            os._exit(0)  # no cleanup, no lease release: as if the machine lost power

    vault.rotation.rotate(Caller(token), PATH, after_step=die)
    return "not killed"


@pytest.mark.parametrize("step", ["create", "set", "test"])
def test_a_run_killed_after_each_step_is_resumed_to_one_working_current_version(
        env: Env, service: ProbeService, step: str) -> None:
    settings = dataclasses.replace(env.settings, rotation_lease=1)
    vault = Vault(settings)
    start(env, service)
    assert env.admin.token is not None
    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    child = multiprocessing.get_context("fork").Process(
        target=_kill_after, args=(fields, env.admin.token, step))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    status = vault.rotation.show(env.admin, PATH)
    assert status.step == {"create": "created", "set": "set", "test": "tested"}[step]
    with pytest.raises(RotationBusy):  # the dead run's lease has not run out yet
        vault.rotation.rotate(env.admin, PATH)
    time.sleep(1.2)
    result = vault.rotation.rotate(env.admin, PATH)
    assert result.result == "rotated" and result.version == 2
    assert service.calls()["create"] == 1  # resumed with the value the dead run made
    current = [v for v, s in states(env).items() if s == "current"]
    assert current == [2]
    assert service.valid(vault.secrets.read(env.admin, PATH, reason="in a test"))


def _rotate_once(settings_dict: dict[str, object], token: str) -> str:
    from airflow_provider_mlsecrets.service import Caller
    from airflow_provider_mlsecrets.settings import Settings

    vault = Vault(Settings(**settings_dict))  # type: ignore[arg-type]
    try:
        return vault.rotation.rotate(Caller(token), PATH).result
    except RotationBusy:
        return "busy"


def test_two_concurrent_rotations_of_one_secret_never_interleave(
        env: Env, service: ProbeService) -> None:
    start(env, service)
    fields = {f.name: getattr(env.settings, f.name) for f in dataclasses.fields(env.settings)}
    assert env.admin.token is not None
    results = run_forked(_rotate_once, [(fields, env.admin.token)] * 4)
    assert results.count("rotated") >= 1 and set(results) <= {"rotated", "busy"}
    rotated = results.count("rotated")
    assert service.calls()["create"] == rotated  # no run made a value another one used
    versions = states(env)
    assert list(versions.values()).count("current") == 1
    assert max(versions) == 1 + rotated
    assert service.valid(env.vault.secrets.read(env.admin, PATH, reason="in a test"))


def test_due_lists_only_what_is_due_and_rotates_only_that(env: Env, service: ProbeService
                                                          ) -> None:
    start(env, service)
    env.vault.secrets.put(env.admin, "ml/other", b"x" * 10)
    service.accept("x" * 10)
    env.vault.rotation.set_policy(env.admin, "ml/other", policy(service),
                                  next_due=utcnow() - timedelta(seconds=1))
    assert env.vault.rotation.due(env.admin) == ["ml/other"]
    assert env.vault.rotation.rotate(env.admin, PATH, only_if_due=True).result == "not due"
    assert env.vault.rotation.rotate(env.admin, "ml/other", only_if_due=True).result == \
        "rotated"
    assert env.vault.secrets.read(env.admin, PATH, reason="in a test") == b"initial-value"
    assert env.vault.rotation.due(env.admin) == []


def test_a_rotator_principal_rotates_without_reading(env: Env, service: ProbeService) -> None:
    start(env, service)
    rotator = env.principal("rotation-dag", "rotator", ("ml/**", ["rotate"]))
    assert env.vault.rotation.due(rotator) == []
    assert env.vault.rotation.rotate(rotator, PATH).result == "rotated"
    from airflow_provider_mlsecrets.errors import AccessDenied
    with pytest.raises(AccessDenied):
        env.vault.secrets.read(rotator, PATH, reason="in a test")
    with pytest.raises(AccessDenied):
        env.vault.rotation.set_policy(rotator, PATH, policy(service))
    pipeline = env.principal("train", "pipeline", ("ml/**", ["inject"]))
    with pytest.raises(AccessDenied):
        env.vault.rotation.rotate(pipeline, PATH)


def test_policy_validation(env: Env, service: ProbeService) -> None:
    env.vault.secrets.put(env.admin, PATH, b"v")
    for bad in ({"schedule": "often"}, {"schedule": "0 3 * *"}, {"grace": "soon"}):
        with pytest.raises(InvalidInput):
            policy(service, **bad)
    with pytest.raises(InvalidInput, match="unknown rotator 'nope'"):
        RotationPolicy(schedule="1d", rotator="nope").load_rotator()
    with pytest.raises(InvalidInput, match="length"):
        env.vault.rotation.set_policy(env.admin, PATH, RotationPolicy(
            schedule="1d", rotator="random", config={"length": 3}))
    cron = RotationPolicy(schedule="0 3 * * *", rotator="random")
    assert cron.next_due(utcnow()).hour == 3 and not cron.is_short
    assert RotationPolicy(schedule="90s", rotator="random").is_short
    with pytest.raises(InvalidInput, match="no rotation policy"):
        env.vault.rotation.rotate(env.admin, PATH)


def test_a_policy_changed_in_the_database_is_refused(env: Env, service: ProbeService) -> None:
    start(env, service)
    with engine_for(env.settings.db_url).begin() as c:
        c.execute(update(Secret).where(Secret.path == PATH).values(
            rotation=policy(service, schedule="1d").to_json()))
    with pytest.raises(IntegrityError):
        env.vault.rotation.rotate(env.admin, PATH)
    # one altered secret fails on its own: it is listed as due (so its run fails loudly)
    # and does not stop the others
    env.vault.secrets.put(env.admin, "ml/other", b"y" * 10)
    env.vault.rotation.set_policy(env.admin, "ml/other", policy(service),
                                  next_due=utcnow() - timedelta(seconds=1))
    assert env.vault.rotation.due(env.admin) == ["ml/api/key", "ml/other"]
    assert env.vault.rotation.rotate(env.admin, "ml/other").result == "rotated"


def test_a_state_row_pointing_at_an_old_version_cannot_promote_it(
        env: Env, service: ProbeService) -> None:
    start(env, service)
    env.vault.secrets.put(env.admin, PATH, b"second-value")  # versions 1 (previous), 2
    with engine_for(env.settings.db_url).begin() as c:
        sid = c.execute(select(Secret.id).where(Secret.path == PATH)).scalar_one()
        c.execute(update(Rotation).where(Rotation.secret_id == sid).values(
            step="tested", pending_version=1))
        c.execute(update(SecretVersion).where(SecretVersion.secret_id == sid,
                                              SecretVersion.version == 1).values(state="pending"))
    with pytest.raises(IntegrityError):
        env.vault.rotation.rotate(env.admin, PATH)
    assert env.vault.secrets.read(env.admin, PATH, reason="in a test") == b"second-value"


def test_random_rotator_makes_values_of_the_configured_shape(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/token", b"first")
    env.vault.rotation.set_policy(env.admin, "ml/token", RotationPolicy(
        schedule="7d", rotator="random", config={"length": 48, "alphabet": "hex"}))
    env.vault.rotation.rotate(env.admin, "ml/token")
    value = env.vault.secrets.read(env.admin, "ml/token", reason="in a test")
    assert len(value) == 48 and set(value.decode()) <= set("0123456789abcdef")
    statuses = env.vault.rotation.status(env.admin)
    assert [s.path for s in statuses] == ["ml/token"] and statuses[0].rotations == 1


# -- regressions from the security review: each was a reproduced defect ------------------
def _stop_after(step: str) -> object:
    def hook(done: str) -> None:
        if done == step:
            raise RuntimeError("worker lost")
    return hook


def test_an_interrupted_cancel_is_finished_by_the_next_run_never_promoted(
        env: Env, service: ProbeService) -> None:
    start(env, service)
    with pytest.raises(RotationFailed):
        env.vault.rotation.rotate(env.admin, PATH, after_step=_stop_after("test"))
    pending = env.vault.secrets.read(env.admin, PATH, 2, reason="in a test")
    service.fail("invalidate")
    with pytest.raises(RotationFailed, match="next run finishes the cancel"):
        env.vault.rotation.cancel(env.admin, PATH)
    assert env.vault.rotation.show(env.admin, PATH).step == "cancelling"
    with pytest.raises(VersionConflict):
        env.vault.secrets.put(env.admin, PATH, b"manual")
    service.fail("invalidate", on=False)
    result = env.vault.rotation.rotate(env.admin, PATH, only_if_due=True)
    assert result.result == "cancelled"
    assert env.vault.secrets.read(env.admin, PATH, reason="in a test") == b"initial-value"
    assert service.valid("initial-value") and not service.valid(pending)
    assert states(env) == {1: "current", 2: "destroyed"}


def test_a_resumed_rotation_tests_again_before_it_promotes(env: Env,
                                                           service: ProbeService) -> None:
    start(env, service)
    with pytest.raises(RotationFailed):
        env.vault.rotation.rotate(env.admin, PATH, after_step=_stop_after("test"))
    pending = env.vault.secrets.read(env.admin, PATH, 2, reason="in a test")
    with service.state() as data:  # the service lost the value after it was tested
        data["valid"].remove(pending.decode())
    with pytest.raises(RotationFailed, match="failed at test"):
        env.vault.rotation.rotate(env.admin, PATH)
    assert env.vault.secrets.read(env.admin, PATH, reason="in a test") == b"initial-value"


def test_a_policy_is_a_disclosure_and_needs_read_on_every_path_it_names(
        env: Env, service: ProbeService, tmp_path: Path) -> None:
    from airflow_provider_mlsecrets.errors import AccessDenied

    env.vault.secrets.put(env.admin, "db/admin", b"postgresql://admin:pw@127.0.0.1/x")
    env.vault.secrets.put(env.admin, PATH, b"v")
    fenced = env.principal("fenced-engineer", "security_engineer")
    env.vault.access.grant(env.admin, "fenced-engineer", "db/**", ["read", "inject"], deny=True)
    evil = RotationPolicy(schedule="1d", rotator="http", config={
        "issue_url": "http://127.0.0.1:9/issue", "test_url": "http://127.0.0.1:9/t",
        "revoke_url": "http://127.0.0.1:9/r", "admin_secret": "db/admin"})
    with pytest.raises(AccessDenied, match="read on db/admin"):
        env.vault.rotation.set_policy(fenced, PATH, evil)
    [record] = [r for r in env.vault.audit.tail(env.admin, 5) if r.action == "rotation.policy"]
    assert record.outcome == "denied"
    env.vault.secrets.put(env.admin, "db/prod", b"prod-secret")
    with pytest.raises(AccessDenied):  # not even for the fenced path itself
        env.vault.rotation.set_policy(fenced, "db/prod", policy(service))
    writer = env.principal("writer", "pipeline", ("ml/**", ["inject"]))
    with pytest.raises(AccessDenied):
        env.vault.rotation.set_policy(writer, PATH, policy(service))
    env.vault.rotation.set_policy(env.admin, PATH, evil)  # an unfenced engineer may


def test_a_state_row_naming_the_current_version_cannot_get_it_invalidated(
        env: Env, service: ProbeService) -> None:
    start(env, service)
    env.vault.rotation.rotate(env.admin, PATH)
    current = env.vault.secrets.read(env.admin, PATH, reason="in a test")
    with engine_for(env.settings.db_url).begin() as c:
        sid = c.execute(select(Secret.id).where(Secret.path == PATH)).scalar_one()
        c.execute(update(Rotation).where(Rotation.secret_id == sid).values(
            previous_version=2, invalidate_after=utcnow() - timedelta(hours=1)))
    # the targets come from the versions below the MAC-covered current one, never the row
    assert env.vault.rotation.rotate(env.admin, PATH, only_if_due=True).result == \
        "invalidated"
    assert service.valid(current) and not service.valid("initial-value")


def test_a_pending_or_awaited_version_cannot_be_destroyed_or_pruned(
        env: Env, service: ProbeService) -> None:
    settings = dataclasses.replace(env.settings, max_versions=1)
    vault = Vault(settings)
    start(env, service, grace="1s")
    vault.rotation.rotate(env.admin, PATH)  # prune keeps version 1: it awaits invalidation
    assert states(env) == {1: "previous", 2: "current"}
    with pytest.raises(VersionConflict, match="still needed by its rotation"):
        vault.secrets.destroy(env.admin, PATH, 1)
    time.sleep(1.1)
    assert vault.rotation.rotate(env.admin, PATH, only_if_due=True).result == "invalidated"
    assert not service.valid("initial-value")
    vault.secrets.destroy(env.admin, PATH, 1)  # now it may go


def test_a_write_or_policy_change_during_a_running_rotation_is_refused(
        env: Env, service: ProbeService) -> None:
    start(env, service)
    attempts: list[str] = []

    def meddle(done: str) -> None:
        if done == "create":
            for action in (lambda: env.vault.secrets.put(env.admin, PATH, b"manual"),
                           lambda: env.vault.rotation.set_policy(env.admin, PATH,
                                                                 policy(service)),
                           lambda: env.vault.rotation.clear_policy(env.admin, PATH)):
                try:
                    action()
                    attempts.append("allowed")
                except (VersionConflict, InvalidInput) as exc:
                    attempts.append(type(exc).__name__)

    env.vault.rotation.rotate(env.admin, PATH, after_step=meddle)
    assert attempts == ["VersionConflict", "InvalidInput", "InvalidInput"]
    assert states(env) == {1: "previous", 2: "current"}


def test_retention_counts_from_the_moment_a_version_was_retired(
        env: Env, service: ProbeService) -> None:
    start(env, service, grace="1h", retention="2s")
    env.vault.rotation.rotate(env.admin, PATH)
    time.sleep(2.1)
    env.vault.rotation.rotate(env.admin, PATH)  # v1 invalidated and retired only now
    assert env.vault.rotation.retain(env.admin) == []
    time.sleep(2.1)
    assert env.vault.rotation.retain(env.admin) == [f"{PATH} v1"]


def test_an_inner_rotator_error_never_shows_the_bare_password(
        env: Env, service: ProbeService) -> None:
    conn = json.dumps({"conn_type": "generic", "host": "h", "login": "u",
                       "password": "old-conn-pw"}).encode()
    env.vault.secrets.put(env.admin, "connections/svc", conn)
    env.vault.rotation.set_policy(env.admin, "connections/svc", RotationPolicy(
        schedule="1d", rotator="airflow_connection",
        config={"via": "probe", "config": {"dir": str(service.dir)}}))
    service.fail("set")
    with pytest.raises(RotationFailed) as caught:
        env.vault.rotation.rotate(env.admin, "connections/svc")
    new = json.loads(env.vault.secrets.read(env.admin, "connections/svc", 2,
            reason="in a test"))["password"]
    status = env.vault.rotation.show(env.admin, "connections/svc")
    for text in (str(caught.value), status.last_error or ""):
        assert new not in text and "refused value ***" in text
    service.fail("set", on=False)
    env.vault.rotation.rotate(env.admin, "connections/svc")
    assert service.valid(json.loads(env.vault.secrets.read(
        env.admin, "connections/svc", reason="in a test"))["password"])


def test_a_connection_without_a_password_keeps_rotating(env: Env,
                                                        service: ProbeService) -> None:
    env.vault.secrets.put(env.admin, "connections/nopw", b"generic://u@h:1/db")
    env.vault.rotation.set_policy(env.admin, "connections/nopw", RotationPolicy(
        schedule="1d", rotator="airflow_connection",
        config={"via": "probe", "config": {"dir": str(service.dir)}}))
    env.vault.rotation.rotate(env.admin, "connections/nopw")
    env.vault.rotation.rotate(env.admin, "connections/nopw")  # invalidates the password-less v1
    assert env.vault.secrets.read(env.admin, "connections/nopw", reason="in a test").startswith(b"generic://u:")


def test_a_write_during_the_grace_period_leaves_no_value_valid_forever(
        env: Env, service: ProbeService) -> None:
    start(env, service, grace="1s")
    env.vault.rotation.rotate(env.admin, PATH)
    rotated = env.vault.secrets.read(env.admin, PATH, reason="in a test")
    env.vault.secrets.put(env.admin, PATH, b"manual-value")  # an operator's emergency write
    service.accept("manual-value")
    with pytest.raises(InvalidInput, match="still work at the service"):
        env.vault.rotation.clear_policy(env.admin, PATH)
    time.sleep(1.1)
    result = env.vault.rotation.rotate(env.admin, PATH, only_if_due=True)
    assert result.result == "invalidated"
    assert not service.valid("initial-value") and not service.valid(rotated)
    assert service.valid("manual-value")
    assert states(env) == {1: "retired", 2: "retired", 3: "current"}
    env.vault.rotation.clear_policy(env.admin, PATH)  # nothing awaits now


def test_an_invalidation_failure_names_the_invalidate_step(
        env: Env, service: ProbeService) -> None:
    start(env, service, grace="1s")
    env.vault.rotation.rotate(env.admin, PATH)
    time.sleep(1.1)
    service.fail("invalidate")
    with pytest.raises(RotationFailed, match="failed at invalidate"):
        env.vault.rotation.rotate(env.admin, PATH, only_if_due=True)
    service.fail("invalidate", on=False)
    assert env.vault.rotation.rotate(env.admin, PATH, only_if_due=True).result == "invalidated"
