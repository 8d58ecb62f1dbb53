"""Break-glass reads, attacked (issue 17).

The database's owner, without the HSM, tries to let a security engineer read a critical
path alone: a forged approval, a genuine one moved to another path or principal or kept
open longer, a pending request flipped to approved, the critical policy emptied or deleted.
A client over raw HTTP reads without a reason, or claims one in a header. Each is refused
and, where the vault sees it, recorded.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from airflow_provider_mlsecrets.console._bridge import _eligible
from airflow_provider_mlsecrets.errors import AccessDenied, IntegrityError
from airflow_provider_mlsecrets.service.audit import AuditFilter
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.attacks.test_http_front_door import serving
from tests.conftest import Env

CANARY = b"canary-critical-5b1e08"
WHY = "incident 4711: the payment provider rotated"
PATH = "prod/payments/api_key"


@pytest.fixture
def critical(env: Env) -> Env:
    env.vault.secrets.put(env.admin, PATH, CANARY)
    env.vault.secrets.put(env.admin, "prod/payments/other", b"other")
    env.vault.break_glass.set_critical(env.admin, add=("prod/**",))
    return env


def owner(env: Env, sql: str, **params: object) -> None:
    """Raw SQL as the database's owner, outside the vault."""
    with engine_for(env.settings.db_url).begin() as connection:
        connection.execute(text(sql), params)


def refused(env: Env, path: str = PATH) -> Exception:
    with pytest.raises((AccessDenied, IntegrityError)) as caught:
        env.vault.secrets.read(env.admin, path, reason=WHY)
    return caught.value


def approved_request(env: Env, path: str = PATH, window: str = "10m") -> str:
    carol = env.principal(f"carol{uuid.uuid4().hex[:6]}", "security_engineer")
    request = env.vault.break_glass.request(env.admin, path, WHY, window)
    env.vault.break_glass.approve(carol, request.id)
    return request.id


def test_a_forged_approval_opens_nothing(critical: Env) -> None:
    now = datetime.now(timezone.utc)
    owner(critical, "INSERT INTO mlsecrets_access_requests (id, principal, path, "
          "justification, window_seconds, requested_at, state, decided_by, decided_at, "
          "expires_at, mac) VALUES (:id, 'admin', :path, 'forged', 600, :now, 'approved', "
          "'carol', :now, :later, :mac)", id=uuid.uuid4().hex, path=PATH, now=now,
          later=now + timedelta(hours=1), mac=b"\x00" * 32)
    assert isinstance(refused(critical), IntegrityError)
    last = critical.vault.audit.tail(critical.admin, 1, AuditFilter(action="secret.read"))[0]
    assert last.outcome == "error" and "altered outside the vault" in last.reason


def test_a_flipped_pending_request_opens_nothing(critical: Env) -> None:
    request = critical.vault.break_glass.request(critical.admin, PATH, WHY)
    owner(critical, "UPDATE mlsecrets_access_requests SET state = 'approved', "
          "decided_by = 'carol', decided_at = :now, expires_at = :later WHERE id = :id",
          id=request.id, now=datetime.now(timezone.utc),
          later=datetime.now(timezone.utc) + timedelta(hours=1))
    assert isinstance(refused(critical), IntegrityError)


@pytest.mark.parametrize(("column", "value"), [
    ("path", "prod/payments/other"),  # moved to another path
    ("principal", "mallory"),  # given to another principal
    ("expires_at", "later"),  # kept open longer
])
def test_a_genuine_approval_cannot_be_moved_or_extended(critical: Env, column: str,
                                                        value: str) -> None:
    request_id = approved_request(critical)
    if column == "expires_at":
        owner(critical, "UPDATE mlsecrets_access_requests SET expires_at = :v, "
              "window_seconds = 2592000 WHERE id = :id",  # the window made to match
              v=datetime.now(timezone.utc) + timedelta(days=30), id=request_id)
        assert isinstance(refused(critical), IntegrityError)
        return
    if column == "principal":
        mallory = critical.principal("mallory", "security_engineer")
        owner(critical, "UPDATE mlsecrets_access_requests SET principal = :v WHERE id = :id",
              v=value, id=request_id)
        with pytest.raises(IntegrityError):
            critical.vault.secrets.read(mallory, PATH, reason=WHY)
        return
    owner(critical, "UPDATE mlsecrets_access_requests SET path = :v WHERE id = :id",
          v=value, id=request_id)
    assert isinstance(refused(critical, value), IntegrityError)
    assert isinstance(refused(critical, PATH), AccessDenied)  # and its own path is closed


def test_an_expired_window_cannot_be_reopened_by_its_owner(critical: Env) -> None:
    request_id = approved_request(critical, window="1s")
    owner(critical, "UPDATE mlsecrets_access_requests SET expires_at = :v WHERE id = :id",
          v=datetime.now(timezone.utc) - timedelta(seconds=1), id=request_id)
    assert isinstance(refused(critical), AccessDenied)  # expired rows are not consulted
    owner(critical, "UPDATE mlsecrets_access_requests SET expires_at = :v WHERE id = :id",
          v=datetime.now(timezone.utc) + timedelta(hours=1), id=request_id)
    assert isinstance(refused(critical), IntegrityError)


def test_the_critical_policy_cannot_be_emptied_or_deleted(critical: Env) -> None:
    owner(critical, "UPDATE mlsecrets_policy SET value = '[]' WHERE name = 'critical'")
    assert isinstance(refused(critical), IntegrityError)
    assert isinstance(refused(critical, "ml/not/critical"), IntegrityError)  # fails closed
    owner(critical, "DELETE FROM mlsecrets_policy")
    assert "no critical-path policy" in str(refused(critical))
    # init, run again by an operator, does not paper over it: the policy was set before
    result = critical.vault.initialise()
    assert not any("policy" in c for c in result.created)
    assert isinstance(refused(critical), IntegrityError)


def test_a_copied_policy_from_another_vault_does_not_verify(critical: Env, env: Env) -> None:
    """The policy MAC binds the vault id: a row carried over from a database whose policy
    was empty (same HSM) does not stand in for this one's."""
    with engine_for(critical.settings.db_url).begin() as connection:
        row = connection.execute(text("SELECT value, changed_by, changed_at, mac FROM "
                                      "mlsecrets_policy")).one()
    owner(critical, "UPDATE mlsecrets_vault SET vault_id = :v", v=str(uuid.uuid4()))
    critical.vault.core._vault_id = None  # a fresh process would read it again
    assert row.value == '["prod/**"]'
    with pytest.raises(IntegrityError):
        critical.vault.break_glass.critical(critical.admin)


def test_over_raw_http_a_read_without_a_reason_is_refused_even_if_the_header_claims_one(
        critical: Env) -> None:
    with serving(critical) as server:
        claim = {"x-mlsecrets-context": json.dumps({"justification": WHY})}
        status, answer = server.call("POST", "read/ml/none", critical.admin.token, body="{}",
                                     headers=claim)
        assert status in (403, 404)
        critical.vault.secrets.put(critical.admin, "ml/plain", CANARY)
        status, answer = server.call("POST", "read/ml/plain", critical.admin.token,
                                     body="{}", headers=claim)
        assert status == 403 and "reason" in answer["message"]
        status, answer = server.call("POST", f"read/{PATH}", critical.admin.token,
                                     body=json.dumps({"reason": WHY}))
        assert status == 403 and "approval" in answer["message"]
        status, answer = server.call("POST", "read/ml/plain", critical.admin.token,
                                     body=json.dumps({"reason": WHY}))
        assert status == 200 and CANARY.decode() not in server.stop()
    reads = critical.vault.audit.tail(critical.admin, 10, AuditFilter(action="secret.read"))
    assert [r.outcome for r in reads][-3:] == ["denied", "denied", "allowed"]
    refused_read = reads[-3]
    assert "justification" not in refused_read.context  # the header's claim counts for nothing
    assert reads[-1].context["justification"] == WHY


def test_the_console_bridge_cannot_read_request_or_approve() -> None:
    """The console's cookie bridge turns a session into a bearer only for insight GETs and
    reviews: a script on the page cannot use it to read, ask, approve or change the policy."""
    headers = {b"x-mlsecrets-console": b"1", b"sec-fetch-site": b"same-origin"}
    for method, route in (("POST", f"/v1/read/{PATH}"), ("POST", "/v1/access/requests"),
                          ("POST", f"/v1/access/requests/{'0' * 32}/approve"),
                          ("POST", "/v1/policy/critical"), ("GET", "/v1/access/requests")):
        assert not _eligible({"type": "http", "method": method, "path": route}, headers)
    assert _eligible({"type": "http", "method": "GET", "path": "/v1/insight/inventory"},
                     headers)  # the control: the bridge does work for what it is for
