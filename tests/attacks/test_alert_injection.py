"""Attacks on the alerts: record fields are attacker-influenced (an Airflow user's name, a
denied caller's address), so an alert must never render them as a template, let them add
mail headers or recipients, or carry a value or a token. Delivered through Airflow's own
SMTP and HTTP notifiers to a real local SMTP server and HTTP receiver."""

from __future__ import annotations

import json

import pytest

from airflow_provider_mlsecrets.alerts.deliver import message_of
from airflow_provider_mlsecrets.alerts.notify import build
from airflow_provider_mlsecrets.errors import AccessDenied, NotFound, Unauthenticated
from airflow_provider_mlsecrets.service import Caller
from tests.test_alerts import CANARY, Scene, everything_sent, scene, write_rules

__all__ = ["scene"]
JINJA = "{{ 'rend' ~ 'ered' }}{% for x in [1] %}looped{% endfor %}"
NAME = f"airflow-user:{JINJA}\r\nBcc: evil@example.com"


def test_jinja_and_headers_in_a_record_are_delivered_as_text(scene: Scene) -> None:
    write_rules(scene.rules_file, scene.mail, scene.inbox, denial_burst={"count": 1})
    vault = type(scene.vault)(scene.settings)
    vault.secrets.put(scene.admin, "ml/prod/db", CANARY)
    vault.alerts.run_pass()
    attacker = Caller(None, {"component": "test", "client": f"10.0.0.1 {JINJA}"},
                      verified=(NAME,))
    with pytest.raises((AccessDenied, NotFound, Unauthenticated)):
        vault.secrets.read(attacker, "ml/prod/db", reason="{{ config }} please")
    assert vault.alerts.run_pass().sent >= 1
    assert scene.mail.recipients and all(r == ["security@example.com"]
                                         for r in scene.mail.recipients)
    for message in scene.mail.messages():
        assert message["bcc"] is None and "evil@example.com" not in str(message["to"])
    sent = everything_sent(scene)
    assert "{{ 'rend' ~ 'ered' }}" in sent and "{% for x in [1] %}" in sent
    assert "rendered" not in sent
    assert "%}looped{%" in sent and "renderedlooped" not in sent
    hooks = scene.inbox.json()
    assert any(JINJA in json.dumps(h, ensure_ascii=False) for h in hooks)
    assert CANARY.decode() not in sent and scene.admin_token not in sent

    # the control: the same notifier, called as Airflow calls a DAG callback, renders
    (alert,) = [a for a in scene.alerts() if a.principal.startswith("airflow-user:")][:1]
    spec = vault.alerts.config.notifiers[1]
    notifier = build(spec, message_of(alert, ""))
    type(notifier).template_fields  # noqa: B018 - the class still declares them
    notifier.template_fields = ("json",)
    notifier.render_template_fields({})
    assert "renderedlooped" in json.dumps(notifier.json)


def test_nobody_acknowledges_the_alert_about_their_own_read(scene: Scene) -> None:
    """A security engineer who reads a secret cannot close the alert that says so; another
    engineer or an auditor can, and either way the alert was delivered."""
    vault = scene.vault
    vault.secrets.put(scene.admin, "ml/prod/db", CANARY)
    vault.alerts.run_pass()
    vault.secrets.read(scene.admin, "ml/prod/db", reason="INC-1: check the login")
    vault.alerts.run_pass()
    (alert,) = [a for a in vault.alerts.list(scene.admin, open_only=True)
                if a.rule == "human_read"]
    with pytest.raises(AccessDenied, match="own action"):
        vault.alerts.ack(scene.admin, alert.id)
    auditor = scene.principal("aud", "auditor")
    assert vault.alerts.ack(auditor, alert.id).acked_by == "aud"
    assert scene.mail.messages() and scene.inbox.bodies  # delivered all the same
