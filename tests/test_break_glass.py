"""Break-glass reads (issue 17): a person's read carries a reason; a critical path needs a
second security engineer's approval for a bounded window; pipelines' inject is untouched.
On a real SoftHSM2 token, SQLite and PostgreSQL; the CLI as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_provider_mlsecrets.errors import AccessDenied, InvalidInput, NotFound
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.service.audit import AuditFilter, AuditView
from tests.conftest import Env

CANARY = b"canary-break-glass-7f3a9c"
WHY = "incident 4711: the model registry rejects the key"


def records(env: Env, action: str) -> list[AuditView]:
    return env.vault.audit.tail(env.admin, 50, AuditFilter(action=action))


def second_engineer(env: Env, name: str = "carol") -> Caller:
    return env.principal(name, "security_engineer")


@pytest.fixture
def critical(env: Env) -> Env:
    env.vault.secrets.put(env.admin, "prod/payments/api_key", CANARY)
    env.vault.secrets.put(env.admin, "ml/openai/api_key", b"not critical")
    assert env.vault.break_glass.set_critical(env.admin, add=("prod/**",)) == ["prod/**"]
    return env


def test_a_read_without_a_reason_is_refused_and_recorded(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/key", CANARY)
    for reason in (None, "", "   ", "short", "two\nlines here", "x" * 501):
        with pytest.raises(AccessDenied, match="needs a reason"):
            env.vault.secrets.read(env.admin, "ml/key", reason=reason)
    denied = records(env, "secret.read")
    assert [r.outcome for r in denied] == ["denied"] * 6
    assert all("justification" not in r.context for r in denied)
    assert env.vault.secrets.read(env.admin, "ml/key", reason=WHY) == CANARY
    allowed = records(env, "secret.read")[-1]
    assert allowed.outcome == "allowed" and allowed.context["justification"] == WHY
    assert CANARY.decode() not in json.dumps([r.__dict__ for r in records(env, "secret.read")])


def test_inject_needs_no_reason_even_on_a_critical_path(critical: Env) -> None:
    pipeline = critical.principal("train", "pipeline", ("prod/**", ["inject"]))
    assert critical.vault.secrets.inject(pipeline, "prod/payments/api_key") == CANARY


def test_a_critical_read_needs_another_engineers_approval(critical: Env) -> None:
    env, bg = critical, critical.vault.break_glass
    carol = second_engineer(env)
    assert env.vault.secrets.read(env.admin, "ml/openai/api_key", reason=WHY) == b"not critical"
    with pytest.raises(AccessDenied, match="second security engineer"):
        env.vault.secrets.read(env.admin, "prod/payments/api_key", reason=WHY)
    request = bg.request(env.admin, "prod/payments/api_key", WHY, "10m")
    assert request.state == "pending" and request.window_seconds == 600
    with pytest.raises(AccessDenied):  # pending is not approved
        env.vault.secrets.read(env.admin, "prod/payments/api_key", reason=WHY)
    with pytest.raises(AccessDenied, match="never by the one who asked"):
        bg.approve(env.admin, request.id)
    approved = bg.approve(carol, request.id)
    assert approved.state == "approved" and approved.decided_by == "carol"
    assert approved.expires_at is not None
    with pytest.raises(InvalidInput, match="approved, not pending"):
        bg.approve(carol, request.id)
    assert env.vault.secrets.read(env.admin, "prod/payments/api_key", reason=WHY) == CANARY
    # the window is for that principal and that path only
    with pytest.raises(AccessDenied):
        env.vault.secrets.read(carol, "prod/payments/api_key", reason=WHY)
    env.vault.secrets.put(env.admin, "prod/payments/other", b"o")
    with pytest.raises(AccessDenied):
        env.vault.secrets.read(env.admin, "prod/payments/other", reason=WHY)
    read = [r for r in records(env, "secret.read") if r.outcome == "allowed"][-1]
    assert f"break-glass approval {request.id} by carol" in read.reason
    assert read.context["justification"] == WHY
    steps = {a: records(env, a) for a in ("access.request", "access.approve")}
    assert steps["access.request"][-1].path == "prod/payments/api_key"
    assert steps["access.request"][-1].context["justification"] == WHY
    assert [r.outcome for r in steps["access.approve"]] == ["denied", "allowed", "error"]
    assert steps["access.approve"][1].principal == "carol"


def test_a_window_closes_and_a_denied_request_opens_nothing(critical: Env) -> None:
    env, bg = critical, critical.vault.break_glass
    carol = second_engineer(env)
    short = bg.request(env.admin, "prod/payments/api_key", WHY, "1s")
    bg.approve(carol, short.id)
    assert env.vault.secrets.read(env.admin, "prod/payments/api_key", reason=WHY) == CANARY
    time.sleep(1.5)
    with pytest.raises(AccessDenied):
        env.vault.secrets.read(env.admin, "prod/payments/api_key", reason=WHY)
    assert [r.state for r in bg.requests(env.admin) if r.id == short.id] == ["expired"]
    denied = bg.request(env.admin, "prod/payments/api_key", WHY)
    assert bg.deny(carol, denied.id).state == "denied"
    with pytest.raises(InvalidInput):
        bg.approve(carol, denied.id)
    with pytest.raises(AccessDenied):
        env.vault.secrets.read(env.admin, "prod/payments/api_key", reason=WHY)
    assert bg.requests(env.admin, open_only=True) == []


def test_requests_are_bounded_and_checked(critical: Env) -> None:
    env, bg = critical, critical.vault.break_glass
    with pytest.raises(InvalidInput, match="at most 1h"):
        bg.request(env.admin, "prod/payments/api_key", WHY, "2h")
    with pytest.raises(InvalidInput, match="not critical"):
        bg.request(env.admin, "ml/openai/api_key", WHY)
    with pytest.raises(InvalidInput, match="printable"):
        bg.request(env.admin, "prod/payments/api_key", "why?")
    with pytest.raises(InvalidInput, match="32 hexadecimal"):
        bg.approve(env.admin, "../../etc")
    with pytest.raises(NotFound):
        bg.approve(second_engineer(env), "0" * 32)
    # who may not read the path may neither ask nor approve
    pipeline = env.principal("train", "pipeline", ("prod/**", ["inject"]))
    auditor = env.principal("aud", "auditor")
    with pytest.raises(AccessDenied):
        bg.request(pipeline, "prod/payments/api_key", WHY)
    request = bg.request(env.admin, "prod/payments/api_key", WHY)
    for outsider in (pipeline, auditor):
        with pytest.raises(AccessDenied):
            bg.approve(outsider, request.id)
    denied_engineer = env.principal("dave", "security_engineer")
    env.vault.access.grant(env.admin, "dave", "prod/**", ["read"], deny=True)
    with pytest.raises(AccessDenied):
        bg.approve(denied_engineer, request.id)
    assert [r.state for r in bg.requests(auditor)] == ["pending"]


def test_a_pending_request_expires(env: Env, hsm: object, tmp_path: Path) -> None:
    env.vault.secrets.put(env.admin, "prod/k", CANARY)
    env.vault.break_glass.set_critical(env.admin, add=("prod/*",))
    request = env.vault.break_glass.request(env.admin, "prod/k", WHY)
    import dataclasses
    impatient = Vault(dataclasses.replace(env.settings, break_glass_request_ttl="1s"))
    time.sleep(1.5)
    carol = env.principal("carol", "security_engineer")
    with pytest.raises(InvalidInput, match="expired"):
        impatient.break_glass.approve(carol, request.id)


def test_the_critical_policy_is_changed_by_grant_holders_only_and_audited(env: Env) -> None:
    bg = env.vault.break_glass
    assert bg.critical(env.admin) == []
    assert bg.set_critical(env.admin, add=("prod/**", "finance/*")) == ["finance/*", "prod/**"]
    assert bg.set_critical(env.admin, remove=("finance/*",)) == ["prod/**"]
    with pytest.raises(NotFound):
        bg.set_critical(env.admin, remove=("never/**",))
    with pytest.raises(InvalidInput):
        bg.set_critical(env.admin, add=("../x",))
    auditor = env.principal("aud", "auditor")
    assert bg.critical(auditor) == ["prod/**"]
    with pytest.raises(AccessDenied):
        bg.set_critical(auditor, add=("x/**",))
    changes = [r for r in records(env, "policy.critical") if r.outcome == "allowed"]
    assert ["added prod/**" in changes[0].reason, "removed finance/*" in changes[1].reason] \
        == [True, True]


def test_the_cli_walks_the_whole_break_glass_path(critical: Env, tmp_path: Path) -> None:
    env = critical
    carol_token = env.vault.access.create_principal(env.admin, "carol", "security_engineer")
    files = {}
    for name, token in (("admin", env.admin.token), ("carol", carol_token)):
        files[name] = tmp_path / f"{name}.token"
        files[name].write_text(token or "")

    def cli(who: str, *args: str) -> subprocess.CompletedProcess[str]:
        environ = {**{k: v for k, v in os.environ.items() if not k.startswith("MLSECRETS_")},
                   **env.settings.as_config(), "MLSECRETS_HOME": str(tmp_path),
                   "MLSECRETS_TOKEN_FILE": str(files[who])}
        return subprocess.run([sys.executable, "-m", "airflow_provider_mlsecrets.cli.main",
                               *args], env=environ, capture_output=True, text=True,
                              timeout=120, check=False)

    no_reason = cli("admin", "secret", "get", "prod/payments/api_key")
    assert no_reason.returncode == 3 and "--reason" in no_reason.stderr
    refused = cli("admin", "secret", "get", "prod/payments/api_key", "--reason", WHY)
    assert refused.returncode == 3 and "access request" in refused.stderr
    asked = cli("admin", "--json", "access", "request", "prod/payments/api_key",
                "--reason", WHY, "--for", "5m")
    assert asked.returncode == 0, asked.stderr
    request_id = json.loads(asked.stdout)["id"]
    listed = cli("carol", "access", "list", "--open")
    assert request_id in listed.stdout and "pending" in listed.stdout
    assert cli("admin", "access", "approve", request_id).returncode == 3
    approved = cli("carol", "access", "approve", request_id)
    assert approved.returncode == 0 and "may read prod/payments/api_key" in approved.stdout
    read = cli("admin", "secret", "get", "prod/payments/api_key", "--reason", WHY)
    assert read.returncode == 0 and read.stdout.encode() == CANARY
    shown = cli("carol", "policy", "critical")
    assert shown.returncode == 0 and "prod/**" in shown.stdout
    for out in (no_reason, refused, asked, listed, approved, shown):
        assert CANARY.decode() not in out.stdout + out.stderr
