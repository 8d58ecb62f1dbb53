"""Alerts (docs/alerts.md) on a real vault (SoftHSM2, SQLite and PostgreSQL), delivered
through Airflow's own SMTP and HTTP notifiers to a real local SMTP server and a real local
HTTP receiver: each rule fires once for its event and not for others, two evaluators raise
and send each alert once, a failing notifier is retried and nothing is lost, no value or
token is in any alert, and nothing in a record is rendered as a template."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from airflow_provider_mlsecrets.alerts import config as alert_config
from airflow_provider_mlsecrets.errors import (
    AccessDenied,
    AuditChainBroken,
    ConfigurationError,
    HSMUnavailable,
    RotationFailed,
    Unauthenticated,
)
from airflow_provider_mlsecrets.keys.softhsm import DevToken
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.service._core import utcnow
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.models import Alert
from tests import rotator_probe
from tests.conftest import Database, Env, make_settings, run_forked
from tests.receivers import Inbox, Mailbox, free_port, http_receiver, smtp_server
from tests.rotator_probe import ProbeService
from tests.test_audit import tamper

CANARY = b"canary-5f1e-value-never-in-an-alert"
SMTP = "airflow.providers.smtp.notifications.smtp.SmtpNotifier"
HTTP = "airflow.providers.http.notifications.http.HttpNotifier"


@pytest.fixture(scope="module", autouse=True)
def probe_plugin(tmp_path_factory: pytest.TempPathFactory) -> None:
    sys.path.insert(0, str(rotator_probe.install(tmp_path_factory.mktemp("plugins"))))


@dataclass
class Scene(Env):
    """A vault (``Env``: its engineer, ``principal()``) with a mail server and a webhook
    receiver its alerts go to."""

    admin_token: str
    mail: Mailbox
    inbox: Inbox
    rules_file: Path

    def alerts(self, rule: str | None = None) -> list[Alert]:
        with self.vault.core.transaction() as session:
            rows = list(session.scalars(select(Alert).order_by(Alert.id)))
        return [a for a in rows if rule is None or a.rule == rule]

    def rules(self) -> list[str]:
        return [a.rule for a in self.alerts()]


def write_rules(path: Path, mail: Mailbox, inbox: Inbox, **rules: Any) -> None:
    path.write_text(json.dumps({
        "rules": {"denial_burst": {"count": 3, "window": "1h"}, **rules},
        "notifiers": [
            {"name": "mail", "class": SMTP,
             "kwargs": {"to": "security@example.com", "from_email": "vault@example.com",
                        "smtp_conn_id": "alerts_smtp"}},
            {"name": "hook", "class": HTTP,
             "kwargs": {"http_conn_id": "alerts_http", "endpoint": "/alerts"}}],
        "delivery": {"retry": "30s", "max_retry": "10m", "lease": "5m"}}))


@pytest.fixture
def scene(hsm: DevToken, tmp_path: Path, database: Database,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    with smtp_server() as mail, http_receiver() as inbox:
        monkeypatch.setenv("AIRFLOW_CONN_ALERTS_SMTP", f"smtp://127.0.0.1:{mail.port}"
                           "?disable_ssl=true&disable_tls=true&retry_limit=0&timeout=10")
        monkeypatch.setenv("AIRFLOW_CONN_ALERTS_HTTP", f"http://127.0.0.1:{inbox.port}")
        rules_file = tmp_path / "alerts.json"
        write_rules(rules_file, mail, inbox)
        settings = make_settings(hsm, tmp_path, database.url, alert_rules=rules_file,
                                 alert_interval=0)
        vault = Vault(settings)
        made = vault.initialise()
        assert made.admin_token is not None
        yield Scene(vault=vault, admin=Caller(made.admin_token, {"component": "test"}),
                    admin_token=made.admin_token, settings=settings, database=database,
                    mail=mail, inbox=inbox, rules_file=rules_file)


def everything_sent(scene: Scene) -> str:
    """Every email and webhook body, and every stored alert, as one text."""
    rows = [json.dumps({c: str(getattr(a, c)) for c in Alert.__table__.columns.keys()})  # noqa: SIM118
            for a in scene.alerts()]
    return "\n".join([*scene.mail.texts(), *(r.decode() for r in scene.mail.raw),
                      *(b.decode() for b in scene.inbox.bodies), *rows])


def test_each_rule_fires_once_for_its_event_and_not_for_others(scene: Scene,
                                                               tmp_path: Path) -> None:
    vault, admin = scene.vault, scene.admin
    vault.secrets.put(admin, "ml/prod/db", CANARY)
    vault.secrets.put(admin, "ml/prod/api", b"second")
    train = Caller(None, {"component": "test", "dag_id": "train", "task_id": "fit"},
                   verified=("dag:train",))
    vault.access.create_principal(admin, "dag:train", "pipeline")
    vault.access.grant(admin, "dag:train", "ml/**", ["inject"])
    assert vault.secrets.inject(train, "ml/prod/db") == CANARY  # before the first pass
    first = vault.alerts.run_pass()
    assert first.raised == 0 and scene.rules() == []  # the past raises nothing

    assert vault.secrets.inject(train, "ml/prod/db") == CANARY  # seeded: not new
    assert vault.alerts.run_pass().raised == 0
    vault.secrets.inject(train, "ml/prod/api")  # new to this DAG
    vault.secrets.inject(train, "ml/prod/api")
    assert scene.rules() == [] and vault.alerts.run_pass().raised == 1
    assert scene.rules() == ["new_dag_secret"]
    (new,) = scene.alerts("new_dag_secret")
    assert (new.principal, new.path) == ("dag:train", "ml/prod/api")
    assert json.loads(new.details)["dag_id"] == "train"

    assert vault.secrets.read(admin, "ml/prod/db", reason="incident 42") == CANARY
    assert vault.alerts.run_pass().raised == 1
    (read,) = scene.alerts("human_read")
    assert (read.path, json.loads(read.details)["justification"]) == ("ml/prod/db",
                                                                       "incident 42")

    viewer = scene.principal("eve", "viewer", ("ml/public/**", ["list"]))
    for _ in range(5):
        with pytest.raises(AccessDenied):
            vault.secrets.read(viewer, "ml/prod/db", reason="curious")
    assert vault.alerts.run_pass().raised == 1  # 5 denials, threshold 3: one burst
    (burst,) = scene.alerts("denial_burst")
    assert burst.principal == "eve" and json.loads(burst.details)["by"] == "principal"

    service = ProbeService(tmp_path / "probe")
    vault.secrets.put(admin, "ml/api/key", b"initial-value")
    service.accept("initial-value")
    vault.rotation.set_policy(admin, "ml/api/key", RotationPolicy(
        schedule="30d", rotator="probe", config={"dir": str(service.dir)}))
    service.fail("test")
    with pytest.raises(RotationFailed):
        vault.rotation.rotate(admin, "ml/api/key")
    assert vault.alerts.run_pass().raised == 1
    assert scene.alerts("rotation_failed")[0].path == "ml/api/key"

    vault.audit.verify(admin)  # passes: no alert
    assert vault.alerts.run_pass().raised == 0
    tamper(scene, lambda c: c.execute(text(
        "UPDATE mlsecrets_audit SET reason = 'changed' WHERE chain = 1 AND seq = 3")))
    with pytest.raises(AuditChainBroken):
        vault.audit.verify(admin)
    assert vault.alerts.run_pass().raised == 1
    assert scene.alerts("audit_failed")[0].principal == "admin"

    assert sorted(scene.rules()) == sorted(["new_dag_secret", "human_read", "denial_burst",
                                            "rotation_failed", "audit_failed"])
    assert vault.alerts.run_pass().raised == 0  # nothing twice
    assert CANARY.decode() not in everything_sent(scene)
    assert scene.admin_token not in everything_sent(scene)


def test_time_based_rules_fire_once_a_day_while_they_last(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    vault, admin = scene.vault, scene.admin
    vault.secrets.put(admin, "ml/prod/db", CANARY)
    now = utcnow()
    assert vault.alerts.run_pass(now=now).raised == 0
    later = now + timedelta(days=2)  # no verification for two days
    assert vault.alerts.run_pass(now=later).raised == 1
    assert scene.rules() == ["audit_overdue"]
    assert vault.alerts.run_pass(now=later + timedelta(hours=1)).raised == 0  # same day
    vault.audit.verify(admin)
    assert vault.alerts.run_pass(now=now + timedelta(hours=1)).raised == 0

    vault.keys.start(admin)  # a key rotation begun and left: nothing re-wrapped
    assert vault.alerts.run_pass(now=now + timedelta(hours=2)).raised == 0
    assert vault.alerts.run_pass(now=now + timedelta(hours=30)).raised == 2
    assert sorted(scene.rules()) == ["audit_overdue", "audit_overdue", "rewrap_pending"]
    vault.keys.finish(admin)
    assert vault.alerts.run_pass(now=now + timedelta(days=5)).raised == 1  # overdue only

    # records beyond the HSM's mark for long: the evaluator moves the mark itself ...
    vault.secrets.put(admin, "ml/prod/db", b"v2")
    vault.audit.verify(admin)
    vault.secrets.put(admin, "ml/prod/db", b"v3")
    assert vault.alerts.run_pass(now=now + timedelta(hours=2)).raised == 0
    assert "mark_stale" not in scene.rules()
    # ... and alerts when it cannot
    vault.secrets.put(admin, "ml/prod/db", b"v4")

    def broken(chain: int) -> None:
        raise HSMUnavailable("the HSM does not answer")

    monkeypatch.setattr(vault.core.marks, "advance", broken)
    assert vault.alerts.run_pass(now=now + timedelta(hours=3)).raised == 1
    (stale,) = scene.alerts("mark_stale")
    assert "HSMUnavailable" in json.loads(stale.details)["why"]


def test_delivery_by_smtp_and_http_names_the_record_and_never_a_value(scene: Scene) -> None:
    vault, admin = scene.vault, scene.admin
    vault.secrets.put(admin, "ml/prod/db", CANARY)
    vault.alerts.run_pass()
    vault.secrets.read(admin, "ml/prod/db", reason="on call for INC-7")
    result = vault.alerts.run_pass()
    assert (result.raised, result.sent, result.failed, result.pending) == (1, 1, 0, 0)
    (alert,) = scene.alerts()
    assert alert.delivered_at is not None and alert.delivered_to == "hook\nmail"
    (message,) = scene.mail.messages()
    assert scene.mail.recipients == [["security@example.com"]]
    assert message["subject"] == "[mlsecrets high] plaintext read by a person by admin on " \
                                 "ml/prod/db"
    body = scene.mail.texts()[0]
    for needed in ("admin", "ml/prod/db", f"chain {alert.chain}, record {alert.seq}",
                   str(alert.request_id), "on call for INC-7"):
        assert needed in body
    (hook,) = scene.inbox.json()
    assert hook["rule"] == "human_read" and hook["audit_record"] == {
        "chain": alert.chain, "seq": alert.seq, "request_id": alert.request_id}
    assert vault.alerts.run_pass().sent == 0  # delivered once
    assert len(scene.mail.raw) == 1 and len(scene.inbox.bodies) == 1
    assert CANARY.decode() not in everything_sent(scene)
    assert scene.admin_token not in everything_sent(scene)


def test_a_failing_notifier_is_retried_and_the_alert_is_not_lost(scene: Scene) -> None:
    vault, admin = scene.vault, scene.admin
    vault.secrets.put(admin, "ml/prod/db", CANARY)
    vault.alerts.run_pass()
    scene.inbox.fail_next = 2
    vault.secrets.read(admin, "ml/prod/db", reason="on call for INC-7")
    now = utcnow()
    first = vault.alerts.run_pass(now=now)
    assert (first.sent, first.failed, first.pending) == (0, 1, 1)
    assert first.errors == ["alert 1: hook: AirflowException (HTTP 500)"]
    assert len(scene.mail.raw) == 1 and scene.inbox.bodies == []  # mail went out once
    assert vault.alerts.run_pass(now=now).sent == 0  # not due before its backoff
    assert scene.inbox.refused == 1
    second = vault.alerts.run_pass(now=now + timedelta(seconds=31))
    assert (second.failed, scene.inbox.refused) == (1, 2)
    assert vault.alerts.run_pass(now=now + timedelta(seconds=60)).sent == 0  # backoff doubled
    third = vault.alerts.run_pass(now=now + timedelta(seconds=92))
    assert (third.sent, third.pending) == (1, 0)
    assert len(scene.mail.raw) == 1 and len(scene.inbox.bodies) == 1
    (alert,) = scene.alerts()
    assert alert.attempts == 2 and alert.last_error is None


def test_a_sender_that_died_mid_send_is_taken_over_after_its_lease(scene: Scene) -> None:
    vault, admin = scene.vault, scene.admin
    vault.secrets.put(admin, "ml/prod/db", CANARY)
    vault.alerts.run_pass()
    vault.secrets.read(admin, "ml/prod/db", reason="on call for INC-7")
    now = utcnow()
    vault.alerts.run_pass(now=now - timedelta(days=1))  # raised; delivered below
    with engine_for(scene.settings.db_url).begin() as c:  # a sender claimed it, then died
        c.execute(update(Alert).values(delivered_at=None, delivered_to="",
                                       claimed_until=now + timedelta(minutes=5),
                                       claimed_by="dead-host:1"))
    sent_before = len(scene.mail.raw)
    assert vault.alerts.run_pass(now=now).sent == 0
    assert len(scene.mail.raw) == sent_before  # its lease holds
    assert vault.alerts.run_pass(now=now + timedelta(minutes=6)).sent == 1
    assert len(scene.mail.raw) == sent_before + 1  # once more, after the crash


def _evaluate_many(settings: Settings, rounds: int) -> int:
    vault = Vault(settings)
    return sum(vault.alerts.run_pass().raised for _ in range(rounds))


def test_two_evaluators_raise_and_send_each_alert_once(scene: Scene) -> None:
    vault, admin = scene.vault, scene.admin
    vault.secrets.put(admin, "ml/prod/db", CANARY)
    vault.alerts.run_pass()
    for i in range(12):
        vault.secrets.read(admin, "ml/prod/db", reason=f"reading {i:02d} for INC-7")
    raised = run_forked(_evaluate_many, [(scene.settings, 3), (scene.settings, 3)])
    assert sorted(raised) in ([0, 12], [6, 6]) or sum(raised) == 12, raised
    alerts = scene.alerts("human_read")
    assert len(alerts) == 12 and all(a.delivered_at is not None for a in alerts)
    assert len(scene.mail.raw) == 12 and len(scene.inbox.bodies) == 12
    reasons = sorted(json.loads(a.details)["justification"] for a in alerts)
    assert reasons == sorted(f"reading {i:02d} for INC-7" for i in range(12))


def test_unauthenticated_denials_burst_by_address(scene: Scene) -> None:
    vault = scene.vault
    vault.alerts.run_pass()
    for i in range(4):
        caller = Caller(f"mls_{'x' * 40}{i}", {"component": "test", "client": "203.0.113.9"})
        with pytest.raises(Unauthenticated):
            vault.secrets.list(caller)
    vault.alerts.run_pass()
    by = sorted(json.loads(a.details)["by"] for a in scene.alerts("denial_burst"))
    assert by == ["client", "principal"]
    client = next(a for a in scene.alerts("denial_burst")
                  if json.loads(a.details)["by"] == "client")
    assert json.loads(client.details)["subject"] == "203.0.113.9"


def test_rules_can_be_turned_off_and_limited(scene: Scene) -> None:
    write_rules(scene.rules_file, scene.mail, scene.inbox,
                human_read={"only_critical": True}, new_dag_secret={"enabled": False})
    vault = Vault(scene.settings)
    vault.secrets.put(scene.admin, "ml/prod/db", CANARY)
    vault.alerts.run_pass()
    vault.secrets.read(scene.admin, "ml/prod/db", reason="not critical")
    assert vault.alerts.run_pass().raised == 0


@pytest.mark.parametrize(("content", "message"), [
    ({"rules": {"nope": {}}}, "unknown key"),
    ({"rules": {"denial_burst": {"window": "soon"}}}, "rules.denial_burst.window"),
    ({"rules": {"denial_burst": {"count": 0}}}, "count must be"),
    ({"rules": {"human_read": {"paths": ["../x"]}}}, "rules.human_read.paths"),
    ({"notifiers": [{"name": "x"}]}, "needs a 'class'"),
    ({"notifiers": [{"name": "x", "class": "os.system"}]}, "receive the alert"),
    ({"notifiers": [{"name": "x", "class": SMTP, "kwargs": {"subject": "{{ ti }}"}}]},
     "which the alert fills in"),
    ({"notifiers": [{"name": "a", "class": HTTP}, {"name": "a", "class": HTTP}]},
     "share a name"),
])
def test_the_file_is_validated_with_clear_errors(tmp_path: Path, content: Any,
                                                 message: str) -> None:
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigurationError, match=message):
        alert_config.load(path)


@pytest.mark.parametrize("class_path", ["collections.OrderedDict",
                                        "subprocess.Popen", "no.such.Notifier"])
def test_only_airflow_notifiers_are_instantiated(class_path: str) -> None:
    from airflow_provider_mlsecrets.alerts.notify import notifier_class

    spec = alert_config.parse({"notifiers": [
        {"name": "x", "class": class_path, "message": {"args": "text"}}]}).notifiers[0]
    with pytest.raises(ConfigurationError, match=r"not an Airflow notifier|cannot import"):
        notifier_class(spec)


def test_defaults_without_a_file() -> None:
    config = alert_config.load(None)
    assert set(config.rules) == set(alert_config.DEFAULTS) and config.notifiers == ()
    assert config.rules["denial_burst"].count == 10


def test_the_background_evaluator_is_woken_by_a_commit(scene: Scene) -> None:
    from airflow_provider_mlsecrets.alerts.runner import AlertRunner

    vault = Vault(dataclasses.replace(scene.settings, alert_interval=3600))
    vault.secrets.put(scene.admin, "ml/prod/db", CANARY)
    runner = AlertRunner(lambda: vault, min_gap=0.05)
    runner.start()
    try:
        wait_until(lambda: runner.passes >= 1)
        vault.secrets.read(scene.admin, "ml/prod/db", reason="woken by the commit")
        wait_until(lambda: len(scene.mail.raw) == 1)  # long before the hour's interval
    finally:
        runner.stop()
    assert scene.rules() == ["human_read"]


def wait_until(condition: Any, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    import uvicorn

    from airflow_provider_mlsecrets.api.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: settings), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_routes_client_and_cli_through_the_service(scene: Scene, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from airflow_provider_mlsecrets.cli.main import main
    from airflow_provider_mlsecrets.client.remote import RemoteVault

    vault, admin = scene.vault, scene.admin
    vault.secrets.put(admin, "ml/prod/db", CANARY)
    auditor = scene.principal("auditor", "auditor", ("**", ["audit", "list"]))
    viewer = scene.principal("viewer", "viewer", ("ml/**", ["list"]))
    with serving(scene.settings) as url:
        remote = RemoteVault(dataclasses.replace(scene.settings, url=url))
        assert remote.alerts.run(auditor).raised == 0  # seeds
        vault.secrets.read(admin, "ml/prod/db", reason="over the service")
        result = remote.alerts.run(auditor)
        assert (result.raised, result.sent) == (1, 1)
        (alert,) = remote.alerts.open(auditor)
        assert (alert.rule, alert.path, alert.principal) == ("human_read", "ml/prod/db",
                                                             "admin")
        with pytest.raises(AccessDenied):
            remote.alerts.list(viewer)
        with pytest.raises(AccessDenied):
            remote.alerts.run(viewer)
        assert remote.alerts.test(auditor) == {"mail": "sent", "hook": "sent"}
        token = tmp_path / "auditor.token"
        token.write_text(auditor.token or "")
        env = {"MLSECRETS_URL": url, "MLSECRETS_TOKEN_FILE": str(token),
               "MLSECRETS_HOME": str(tmp_path)}
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            capsys.readouterr()
            assert main(["alerts", "list", "--open", "--json"]) == 0
            assert [a["id"] for a in json.loads(capsys.readouterr().out)] == [alert.id]
            assert main(["alerts", "ack", str(alert.id)]) == 0
            assert "acknowledged by auditor" in capsys.readouterr().out
            assert main(["alerts", "list", "--open"]) == 0
            assert "no alerts open" in capsys.readouterr().out
            assert main(["alerts", "run", "--json"]) == 0
            assert json.loads(capsys.readouterr().out)["raised"] == 0
            assert main(["alerts", "test"]) == 0
    actions = [r.action for r in vault.audit.tail(admin, 40)]
    for action in ("alert.evaluate", "insight.alerts", "alert.list", "alert.ack",
                   "alert.test"):
        assert action in actions
    assert len(scene.mail.raw) == 3  # the alert, two tests
    assert CANARY.decode() not in everything_sent(scene)


def test_the_remote_alerts_take_the_same_parameters() -> None:
    import inspect

    from airflow_provider_mlsecrets.client.remote import RemoteAlerts
    from airflow_provider_mlsecrets.service.alerts import AlertService

    for name in ("run", "list", "open", "ack", "test"):
        ours = inspect.signature(getattr(RemoteAlerts, name)).parameters
        theirs = inspect.signature(getattr(AlertService, name)).parameters
        assert list(ours) == list(theirs), name


def test_the_maintenance_dag_runs_every_minute_without_catchup() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "maintenance", Path(__file__).parents[1] / "example_dags" / "mlsecrets_maintenance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.dag
    assert (dag.dag_id, dag.catchup, dag.max_active_runs) == ("mlsecrets_maintenance", False, 1)
    assert dag.schedule == "* * * * *"
    assert [t.task_id for t in dag.tasks] == ["evaluate_alerts"]
