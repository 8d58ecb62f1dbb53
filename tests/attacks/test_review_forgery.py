"""Access reviews and the console's routes, attacked as an attacker would:

- a reviewer's file edited afterwards (JSON, HTML, CSV: a visible cell, the embedded data,
  the signature block, bytes appended), a MAC taken from another review, a review of
  another vault: ``review verify`` refuses every one, and records that it did;
- the database's owner (no HSM) forging a review with a raw SQL ``review.create`` record,
  or rewriting or deleting a genuine review's record: refused;
- a viewer calling the insight routes and the review button over raw HTTP, against a real
  ``mlsecrets serve``: refused (403) and recorded as denied;
- no insight answer or review, in any format, holds a value, a token or a token hash: a
  canary value is planted and every answer scanned.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from airflow_provider_mlsecrets.audit.record import Entry, format_ts, genesis, next_hash
from airflow_provider_mlsecrets.errors import IntegrityError
from airflow_provider_mlsecrets.review import seal
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.service._core import utcnow
from airflow_provider_mlsecrets.service.audit import AuditFilter
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.attacks.test_http_front_door import serving
from tests.conftest import Env, make_settings

CANARY = "canary-forgery-8c2b-a-value-no-answer-may-hold"
COLUMNS = ("ts, principal, roles, action, path, version, outcome, reason, request_id, "
           "context")


@pytest.fixture
def made(env: Env) -> dict[str, bytes]:
    """A review of a vault whose pipeline never used its two grants; its three files."""
    env.vault.secrets.put(env.admin, "ml/key", CANARY.encode())
    env.principal("pipe", "pipeline", ("ml/**", ["inject"]), ("other/**", ["inject"]))
    with engine_for(env.settings.db_url).begin() as connection:
        connection.execute(text("UPDATE mlsecrets_grants SET created_at = :at"),
                           {"at": utcnow().replace(year=2020)})
    made = env.vault.insight.review(env.admin, window="90d")
    assert len(made.review["unused_grants"]) == 2
    return made.files


def refused(env: Env, content: bytes, why: str) -> None:
    """``review verify`` refuses ``content`` saying ``why``, and records the refusal."""
    with pytest.raises(IntegrityError, match=why):
        env.vault.insight.verify_review(env.admin, content)
    record = env.vault.audit.tail(env.admin, 1, AuditFilter(action="review.verify"))[-1]
    assert record.outcome == "error" and record.reason.startswith("IntegrityError")


CHANGED = "was changed after it was made"
NOT_HSM = "not this vault's HSM's"


def json_edit(path: list[str], value: object) -> Callable[[bytes], bytes]:
    def edit(content: bytes) -> bytes:
        document = json.loads(content)
        node = document
        for key in path[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[path[-1]] = value
        return json.dumps(document, indent=2).encode()
    return edit


@pytest.mark.parametrize(("edit", "why"), [
    (json_edit(["review", "unused_grants"], []), CHANGED),  # hide what it flagged
    (json_edit(["review", "principals", "1", "grants", "0", "uses"], 99), CHANGED),
    (json_edit(["review", "created_by"], "someone-else"), CHANGED),
    (json_edit(["signature", "created_by"], "someone-else"), NOT_HSM),
    (json_edit(["signature", "created_at"], "2020-01-01T00:00:00.000000Z"), NOT_HSM),
    (json_edit(["signature", "window"], "1d"), NOT_HSM),
    (json_edit(["signature", "mac"], "00" * 32), NOT_HSM),
    (json_edit(["signature", "seq"], 1), "does not say what the file says"),
    (json_edit(["format"], "mlsecrets-review-v0"), "review and its signature only"),
    (lambda c: json.dumps({**json.loads(c), "note": "approved"}).encode(),
     "review and its signature only"),
])
def test_an_edited_json_review_is_refused(env: Env, made: dict[str, bytes],
                                          edit: Callable[[bytes], bytes], why: str) -> None:
    env.vault.insight.verify_review(env.admin, made["json"])  # the original is fine
    refused(env, edit(made["json"]), why)


def test_reformatting_a_json_review_changes_nothing_it_says(env: Env,
                                                            made: dict[str, bytes]) -> None:
    again = json.dumps(json.loads(made["json"]), separators=(",", ":")).encode()
    assert env.vault.insight.verify_review(env.admin, again).kind == "json"


@pytest.mark.parametrize(("part", "old", "new", "why"), [
    ("body", b"<td>pipe</td>", b"<td>pip3</td>", CHANGED),  # a visible cell
    ("body", b'"principal": "pipe"', b'"principal": "pip3"', CHANGED),  # the embedded data
    ("body", b"inject", b"read", CHANGED),
    ("body", b"<!DOCTYPE html>", b"<!DOCTYPE html><p>approved</p>", CHANGED),
    ("trailer", b'"created_by": "admin"', b'"created_by": "mallory"', NOT_HSM),
    ("trailer", b"<h2>Signature</h2>", b"<h2>Signature: approved</h2>",
     "signature block was changed"),
    ("trailer", b"</footer></body></html>\n", b"</footer></body></html>\n<p>approved</p>\n",
     "signature block was changed"),
])
def test_an_edited_html_review_is_refused(env: Env, made: dict[str, bytes], part: str,
                                          old: bytes, new: bytes, why: str) -> None:
    content = made["html"]
    at = content.rindex(seal.HTML_MARK.encode())
    body, trailer = content[:at], content[at:]
    assert old in (body if part == "body" else trailer)
    if part == "body":
        body = body.replace(old, new)
    else:
        trailer = trailer.replace(old, new)
    refused(env, body + trailer, why)


def test_an_html_review_cut_short_or_without_its_signature_is_refused(
        env: Env, made: dict[str, bytes]) -> None:
    content = made["html"]
    refused(env, content[:content.rindex(seal.HTML_MARK.encode())], "carries no signature")
    refused(env, content[:-30], "signature")


@pytest.mark.parametrize("change", ["cell", "drop-row", "signature", "append"])
def test_an_edited_csv_review_is_refused(env: Env, made: dict[str, bytes],
                                         change: str) -> None:
    lines = made["csv"].split(b"\r\n")
    grant = next(i for i, line in enumerate(lines) if line.startswith(b"unused_grant,"))
    if change == "cell":
        lines[grant] = lines[grant].replace(b"pipe", b"pip3")
    elif change == "drop-row":
        del lines[grant]
    elif change == "signature":
        lines[-2] = lines[-2].replace(b'""created_by"":""admin""',
                                      b'""created_by"":""mallory""')
    else:
        lines.insert(-1, b"note,,,,,approved,,,,,,,,,,")
    why = {"cell": CHANGED, "drop-row": CHANGED, "signature": NOT_HSM,
           "append": "signature"}[change]
    refused(env, b"\r\n".join(lines), why)


def test_a_mac_from_another_review_proves_nothing(env: Env, made: dict[str, bytes]) -> None:
    other = env.vault.insight.review(env.admin, window="1d").files
    a, b = json.loads(made["json"]), json.loads(other["json"])
    # B's content under A's signature: the body is not what the signature names
    refused(env, json.dumps({**b, "signature": a["signature"]}).encode(), CHANGED)
    # B's signature with A's MAC: the MAC is over another review
    refused(env, json.dumps({**b, "signature": {**b["signature"],
                                                "mac": a["signature"]["mac"]}}).encode(),
            NOT_HSM)
    # A's signature relabelled as B (its id, its digests): still A's MAC
    forged = {**a["signature"], "review_id": b["signature"]["review_id"],
              "sha256": b["signature"]["sha256"], "chain": b["signature"]["chain"],
              "seq": b["signature"]["seq"]}
    refused(env, json.dumps({**b, "signature": forged}).encode(), NOT_HSM)
    # A's HTML trailer on B's HTML body
    body_b = other["html"][:other["html"].rindex(seal.HTML_MARK.encode())]
    trailer_a = made["html"][made["html"].rindex(seal.HTML_MARK.encode()):]
    refused(env, body_b + trailer_a, CHANGED)


def test_a_review_of_another_vault_is_refused(env: Env, made: dict[str, bytes],
                                              hsm: object, tmp_path: Path) -> None:
    other = Vault(make_settings(hsm, tmp_path / "other",  # type: ignore[arg-type]
                                f"sqlite:///{tmp_path / 'other.db'}"))
    admin = Caller(other.initialise().admin_token)
    foreign = other.insight.review(admin, window="1d").files["json"]
    refused(env, foreign, "made by another vault")
    with pytest.raises(IntegrityError, match="made by another vault"):
        other.insight.verify_review(admin, made["json"])


# -- the database's owner ------------------------------------------------------------------------
def _triggers_off(connection: object, kind: str) -> None:
    if kind == "sqlite":
        connection.execute(text("DROP TRIGGER mlsecrets_audit_no_update"))  # type: ignore[attr-defined]
        connection.execute(text("DROP TRIGGER mlsecrets_audit_no_delete"))  # type: ignore[attr-defined]
    else:
        connection.execute(text("ALTER TABLE mlsecrets_audit DISABLE TRIGGER USER"))  # type: ignore[attr-defined]


def test_a_review_forged_with_a_raw_sql_record_is_refused(env: Env,
                                                          made: dict[str, bytes]) -> None:
    """The database's owner writes a review that flags nothing, and a ``review.create``
    record for it whose hash chains correctly (on an idle chain, from its public genesis);
    only the seal and the MAC, which need the HSM, are made up."""
    genuine = json.loads(made["json"])
    review = {**genuine["review"], "unused_grants": [], "review_id": str(uuid.uuid4())}
    vault_id = genuine["signature"]["vault_id"]
    from airflow_provider_mlsecrets.review import render
    digests = {kind: seal.digest(render.render(kind, review)) for kind in seal.FORMATS}
    entry = Entry(ts=format_ts(utcnow()), principal="admin", roles="security_engineer",
                  action="review.create", path="", version=None, outcome="allowed",
                  reason="role security_engineer; review " + review["review_id"]
                  + "; sha256 " + " ".join(f"{k}={v}" for k, v in digests.items()),
                  request_id=review["review_id"], context="{}")
    digest = next_hash(genesis(vault_id, 3), 3, 1, entry)
    with engine_for(env.settings.db_url).begin() as connection:
        connection.execute(text(f"INSERT INTO mlsecrets_audit (chain, seq, {COLUMNS}, hash, "
                                "seal) VALUES (3, 1, :ts, :principal, :roles, :action, :path, "
                                ":version, :outcome, :reason, :request_id, :context, :h, :s)"),
                           {**entry.__dict__, "h": digest, "s": b"\x01" * 32})
        connection.execute(text("UPDATE mlsecrets_audit_head SET seq = 1, hash = :h "
                                "WHERE chain = 3"), {"h": digest})
    signature = {**genuine["signature"], "review_id": review["review_id"], "sha256": digests,
                 "chain": 3, "seq": 1}
    for mac in ("00" * 32, genuine["signature"]["mac"]):  # made up, or a genuine one copied
        forged = {"format": seal.REVIEW_TAG, "review": review,
                  "signature": {**signature, "mac": mac}}
        refused(env, json.dumps(forged).encode(), NOT_HSM)


@pytest.mark.parametrize("change", ["principal", "reason", "delete"])
def test_a_genuine_reviews_record_rewritten_or_deleted_is_caught(
        env: Env, made: dict[str, bytes], change: str) -> None:
    review_id = json.loads(made["json"])["signature"]["review_id"]
    with engine_for(env.settings.db_url).begin() as connection:
        _triggers_off(connection, env.database.kind)
        where = "WHERE action = 'review.create' AND request_id = :r"
        if change == "principal":  # blame someone else for the review
            connection.execute(text(f"UPDATE mlsecrets_audit SET principal = 'mallory' {where}"),
                               {"r": review_id})
        elif change == "reason":  # keep who, change what it says was flagged
            connection.execute(text(f"UPDATE mlsecrets_audit SET reason = replace(reason, "
                                    f"'2 unused grants', '0 unused grants') {where}"),
                               {"r": review_id})
        else:
            connection.execute(text(f"DELETE FROM mlsecrets_audit {where}"), {"r": review_id})
    why = {"principal": "does not say what the file says", "reason": "altered outside the vault",
           "delete": "not in the audit trail"}[change]
    for content in made.values():
        refused(env, content, why)


# -- over raw HTTP ---------------------------------------------------------------------------------
ROUTES = ["insight/inventory", "insight/secrets/ml/key", "insight/principals",
          "insight/principals/pipe", "insight/rotation", "insight/audit",
          "insight/audit?dag_id=x", "insight/audit/health", "insight/audit/export",
          "insight/keys", "insight/activity", "insight/reach", "insight/age"]


def test_a_viewer_over_raw_http_is_refused_and_recorded(env: Env,
                                                        made: dict[str, bytes]) -> None:
    viewer = env.principal("view", "viewer", ("ml/**", ["list"]))
    with serving(env) as server:
        assert server.call("GET", "insight/inventory", viewer.token)[0] == 200  # its rows
        for route in ROUTES[1:]:
            status, answer = server.call("GET", route, viewer.token)
            assert status == 403, (route, answer)
            assert answer["error"] == "AccessDenied"
        status, _ = server.call("POST", "review", viewer.token, body='{"since": "7d"}')
        assert status == 403
        assert server.call("GET", "insight/principals", None)[0] == 401
    denied = env.vault.audit.tail(env.admin, 100, AuditFilter(principal="view",
                                                              outcome="denied"))
    actions = [r.action for r in denied]
    assert actions.count("review.create") == 1
    assert {a for a in actions if a.startswith("insight.")} == {
        "insight.secret", "insight.principals", "insight.principal", "insight.rotation",
        "insight.audit", "insight.audit_health", "insight.keys", "insight.activity",
        "insight.reach", "insight.age"}
    assert all(r.context["component"] == "http" for r in denied)


def test_no_answer_or_review_holds_a_value_or_a_token(env: Env,
                                                      made: dict[str, bytes]) -> None:
    pipe = env.vault.access.create_principal(env.admin, "reader", "pipeline")
    env.vault.access.grant(env.admin, "reader", "ml/**", ["inject"])
    assert env.vault.secrets.inject(Caller(pipe), "ml/key") == CANARY.encode()
    env.vault.secrets.put(env.admin, "ml/key", (CANARY + "-v2").encode())
    assert env.vault.secrets.read(env.admin, "ml/key",
            reason="in a test").startswith(CANARY.encode())
    with engine_for(env.settings.db_url).connect() as connection:
        secrets = [bytes(h).hex() for (h,) in connection.execute(
            text("SELECT token_hash FROM mlsecrets_principals"))]
    secrets += [str(env.admin.token), pipe, CANARY]
    answers: list[str] = [m.decode() for m in made.values()]
    with serving(env) as server:
        for route in [*ROUTES, "insight/principals/reader", "insight/audit?limit=500"]:
            status, answer = server.call("GET", route, env.admin.token)
            assert status == 200, (route, answer)
            answers.append(json.dumps(answer))
        for kind in seal.FORMATS:
            status, answer = server.call("POST", "review", env.admin.token,
                                         body=json.dumps({"since": "1d", "format": kind}))
            assert status == 200
            answers.append(json.dumps(answer))
    assert len(answers) > 15
    for answer in answers:
        for secret in secrets:
            assert secret not in answer
    # the canary's path is there (metadata), its value nowhere
    assert any("ml/key" in answer for answer in answers)
    assert not any(re.search(r"mls_[A-Za-z0-9_-]{43}", a) for a in answers)
