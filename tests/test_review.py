"""Access reviews on SQLite and PostgreSQL: what a review says, that every format of it
verifies, that it is recorded in the trail, ``mlsecrets review`` / ``review verify`` /
``revoke --from-review FILE --unused`` as real processes, ``POST /v1/review``, and the MAC
encoding's known answer (docs/formats.md)."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from airflow_provider_mlsecrets.api.app import create_app
from airflow_provider_mlsecrets.errors import AccessDenied, InvalidInput
from airflow_provider_mlsecrets.review import render, seal
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service import Caller
from airflow_provider_mlsecrets.service._core import utcnow
from airflow_provider_mlsecrets.service.audit import AuditFilter
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.conftest import Env

ROOT = Path(__file__).resolve().parent.parent
CANARY = b"canary-review-5d1e-value-never-in-a-report"
MLSECRETS = [sys.executable, "-m", "airflow_provider_mlsecrets.cli.main"]


@dataclass
class Scene:
    env: Env
    pipe: Caller
    auditor: Caller
    viewer: Caller
    tokens: list[str]


def backdate(env: Env, principal: str, pattern: str, days: int = 100) -> None:
    """Say a grant was made ``days`` ago (a grant's time is not under its principal's MAC:
    only what it allows is)."""
    with engine_for(env.settings.db_url).begin() as connection:
        connection.execute(text(
            "UPDATE mlsecrets_grants SET created_at = :at WHERE pattern = :pattern AND "
            "principal_id = (SELECT id FROM mlsecrets_principals WHERE name = :name)"),
            {"at": utcnow() - timedelta(days=days), "pattern": pattern, "name": principal})


@pytest.fixture
def scene(env: Env) -> Scene:
    """``pipe`` uses ml/** and never connections/** (both granted 100 days ago) and is
    refused twice; ``idle`` never does anything; the admin reads a value; one rotation is
    overdue."""
    admin, vault = env.admin, env.vault
    for path in ("ml/hf/token", "ml/openai/key", "connections/db", "teams/a/x"):
        vault.secrets.put(admin, path, CANARY)
    tokens = [str(admin.token)]
    pipe = env.principal("pipe", "pipeline", ("ml/**", ["inject"]),
                         ("connections/**", ["inject", "list"]))
    vault.access.grant(admin, "pipe", "ml/openai/**", ["inject"], deny=True)
    auditor = env.principal("aud", "auditor")
    viewer = env.principal("view", "viewer", ("teams/**", ["list"]))
    idle = env.principal("idle", "pipeline", ("teams/a/**", ["inject"]))
    tokens += [str(c.token) for c in (pipe, auditor, viewer, idle)]
    for name, pattern in (("pipe", "ml/**"), ("pipe", "connections/**"),
                          ("idle", "teams/a/**"), ("view", "teams/**")):
        backdate(env, name, pattern)
    vault.secrets.inject(pipe, "ml/hf/token")
    for _ in range(2):
        with pytest.raises(AccessDenied):
            vault.secrets.inject(pipe, "ml/openai/key")
    assert vault.secrets.read(admin, "ml/hf/token", reason="in a test") == CANARY
    vault.rotation.set_policy(admin, "connections/db",
                              RotationPolicy(schedule="30d", rotator="random"),
                              next_due=utcnow() - timedelta(days=3))
    return Scene(env=env, pipe=pipe, auditor=auditor, viewer=viewer, tokens=tokens)


def no_secret_in(scene: Scene, data: bytes) -> None:
    assert CANARY not in data
    with engine_for(scene.env.settings.db_url).connect() as connection:
        hashes = [bytes(h) for (h,) in connection.execute(
            text("SELECT token_hash FROM mlsecrets_principals"))]
    for digest in hashes:
        assert digest.hex().encode() not in data
    for token in scene.tokens:
        assert token.encode() not in data


def test_a_review_says_who_may_reach_what_and_what_was_used(scene: Scene) -> None:
    made = scene.env.vault.insight.review(scene.auditor, window="90d")
    r = made.review
    assert r["created_by"] == "aud" and r["window"] == "90d" and r["secrets"] == 4
    assert r["review_id"] == made.signature.review_id
    principals = {p["name"]: p for p in r["principals"]}
    assert set(principals) == {"admin", "aud", "view", "pipe", "idle"}
    pipe = principals["pipe"]
    grants = {(g["pattern"], g["effect"]): g for g in pipe["grants"]}
    assert grants[("ml/**", "allow")]["uses"] == 1 and not grants[("ml/**", "allow")]["flagged"]
    assert grants[("connections/**", "allow")]["flagged"]
    assert grants[("ml/openai/**", "deny")]["uses"] == 2  # the refusals it made
    assert not grants[("ml/openai/**", "deny")]["flagged"]
    assert {(a["capabilities"], tuple(a["paths"])) for a in pipe["access"]} == {
        ("inject", ("ml/hf/token",)), ("inject,list", ("connections/db",))}
    assert principals["admin"]["access"] == [{
        "capabilities": "read,inject,write,delete,destroy,list,rotate,grant,audit",
        "count": 4, "every": True, "paths": []}]
    assert [(g["principal"], g["pattern"]) for g in r["unused_grants"]] == [
        ("idle", "teams/a/**"), ("pipe", "connections/**"), ("view", "teams/**")]
    assert r["idle_principals"] == ["aud", "idle", "view"]  # its own review is not yet in
    assert [(x["path"], x["state"]) for x in r["rotations"]] == [("connections/db", "overdue")]
    assert [(x["principal"], x["path"]) for x in r["plaintext_reads"]] == [
        ("admin", "ml/hf/token")]
    denied = [d for d in r["denials"] if d["principal"] == "pipe"]
    assert [(d["path"], d["count"], d["reason"]) for d in denied] == [
        ("ml/openai/key", 2, "explicit deny of inject on ml/openai/**")]
    assert r["last_verification"] is None and b"never verified" in made.files["html"]
    for data in made.files.values():
        no_secret_in(scene, data)
    scene.env.vault.audit.verify(scene.auditor)
    later = scene.env.vault.insight.review(scene.auditor, window="90d")
    assert later.review["last_verification"]["ok"] is True
    assert b"last verified at" in later.files["html"]
    assert b"verification,aud" in later.files["csv"]
    record = scene.env.vault.audit.tail(scene.env.admin, 2,
                                        AuditFilter(action="review.create"))[0]
    assert record.request_id == made.signature.review_id and record.principal == "aud"
    assert (record.chain, record.seq) == (made.signature.chain, made.signature.seq)
    for kind, digest in made.signature.sha256.items():
        assert f"{kind}={digest}" in record.reason


def test_every_format_verifies_and_names_its_maker_and_record(scene: Scene) -> None:
    made = scene.env.vault.insight.review(scene.auditor, window="30d")
    for kind, content in made.files.items():
        check = scene.env.vault.insight.verify_review(scene.env.admin, content)
        assert (check.kind, check.review_id, check.created_by) == (
            kind, made.signature.review_id, "aud")
        assert (check.chain, check.seq) == (made.signature.chain, made.signature.seq)
        assert check.recorded_at is not None and check.window == "30d"
        assert [(g["principal"], g["pattern"]) for g in check.unused_grants] == [
            ("idle", "teams/a/**"), ("pipe", "connections/**"), ("view", "teams/**")]
    verified = scene.env.vault.audit.tail(scene.env.admin, 3,
                                          AuditFilter(action="review.verify"))
    assert [r.outcome for r in verified] == ["allowed"] * 3
    assert all(made.signature.review_id in r.reason and "intact" in r.reason for r in verified)


def test_only_auditors_and_engineers_make_reviews(scene: Scene) -> None:
    with pytest.raises(AccessDenied):
        scene.env.vault.insight.review(scene.viewer)
    with pytest.raises(AccessDenied):
        scene.env.vault.insight.review(scene.pipe)
    refused = scene.env.vault.audit.tail(scene.env.admin, 2,
                                         AuditFilter(action="review.create"))
    assert [(r.principal, r.outcome) for r in refused] == [("view", "denied"),
                                                           ("pipe", "denied")]
    with pytest.raises(InvalidInput):
        scene.env.vault.insight.review(scene.auditor, window="forever")


def test_the_html_prints_and_escapes_and_the_csv_is_safe_in_a_spreadsheet() -> None:
    review = {"review_id": "r", "vault_id": "v", "created_at": "t", "created_by": "a",
              "window": "1d", "since": "s", "until": "u", "secrets": 0,
              "principals": [], "unused_grants": [], "idle_principals": [], "rotations": [],
              "plaintext_reads": [], "denials": [{
                  "principal": "<script>alert(1)</script>", "action": "secret.read",
                  "path": "x", "reason": "=HYPERLINK(\"http://evil\")", "count": 1,
                  "first": "f", "last": "l"}]}
    page = render.to_html(review).decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "@media print" in page and "@page" in page and "thead" in page
    assert render.data_from_html(render.to_html(review)) == review
    rows = list(csv.DictReader(io.StringIO(render.to_csv(review).decode())))
    denial = next(r for r in rows if r["section"] == "denial")
    assert denial["detail"].startswith("'=")


def test_the_review_mac_known_answer() -> None:
    """docs/formats.md, "Access review": the MAC body and HMAC with the documented test key
    (32 bytes 0x42 standing in for K_audit)."""
    digests = {"json": "00" * 32, "html": "11" * 32, "csv": "22" * 32}
    data = seal.body("0b5e7b3e-0000-4000-8000-000000000001",
                     "00000000-0000-4000-8000-0000000000bb", "2026-01-02T03:04:05.000000Z",
                     "admin", "90d", "2025-10-04T03:04:05.000000Z",
                     "2026-01-02T03:04:05.000000Z", digests)
    want = "59fbb87bd27db596e9cf628c515dac5fdaf9fc3052d7619ad4162bf4b34d8b8b"
    assert hmac.new(b"\x42" * 32, data, hashlib.sha256).hexdigest() == want
    doc = (ROOT / "docs" / "formats.md").read_text()
    assert want in doc and data.hex()[:120] in doc.replace(" ", "").replace("\n", "")


# -- the command line, as real processes ---------------------------------------------------------
class Cli:
    def __init__(self, env: Env, token: str) -> None:
        home = env.settings.home
        token_file = home / f"cli-{len(token)}-{token[-6:]}.token"
        token_file.write_text(token)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLSECRETS_")}
        self.env.update(env.settings.as_config(), MLSECRETS_HOME=str(home),
                        MLSECRETS_TOKEN_FILE=str(token_file))

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MLSECRETS, *args], capture_output=True, text=True,
                              env=self.env, timeout=300, check=False)


def test_the_review_commands(scene: Scene, tmp_path: Path) -> None:
    cli = Cli(scene.env, str(scene.auditor.token))
    html_file, csv_file, json_file = (tmp_path / f"r.{k}" for k in ("html", "csv", "json"))
    made = cli("review", "--since", "90d", "--out", str(html_file), "--out", str(csv_file),
               "--out", str(json_file))
    assert made.returncode == 0, made.stderr
    assert "3 grants unused for the window" in made.stdout and "audit record: chain" in made.stdout
    for path in (html_file, csv_file, json_file):
        no_secret_in(scene, path.read_bytes())
        checked = cli("review", "verify", str(path))
        assert checked.returncode == 0, checked.stderr
        assert "is intact and this vault's" in checked.stdout
        assert "made by aud at" in checked.stdout and "its audit record: chain" in checked.stdout
    as_json = json.loads(cli("--json", "review", "verify", str(json_file)).stdout)
    review_id = json.loads(json_file.read_text())["review"]["review_id"]
    assert as_json["ok"] is True and as_json["review_id"] == review_id
    again = cli("review", "--out", str(html_file))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert cli("review", "--out", str(tmp_path / "r.txt")).returncode == 2
    assert cli("review", "--out", str(html_file), "--force").returncode == 0
    html_file.write_bytes(html_file.read_bytes().replace(b"pipe", b"pip3"))
    broken = cli("review", "verify", str(html_file))
    assert broken.returncode == 5 and "was changed after it was made" in broken.stderr
    viewer = Cli(scene.env, str(scene.viewer.token))
    assert viewer("review", "--out", str(tmp_path / "v.json")).returncode == 3
    assert not (tmp_path / "v.json").exists()


def test_revoke_from_review_revokes_what_it_flags_and_says_so(scene: Scene,
                                                               tmp_path: Path) -> None:
    env, admin, access = scene.env, scene.env.admin, scene.env.vault.access
    report = tmp_path / "review.csv"
    report.write_bytes(env.vault.insight.review(scene.auditor, window="90d").files["csv"])
    # after the review: idle's grant gets another capability (changed since: left alone)
    access.grant(admin, "idle", "teams/a/**", ["list"])
    cli = Cli(env, str(admin.token))
    auditor = Cli(env, str(scene.auditor.token))
    assert auditor("revoke", "--from-review", str(report), "--unused").returncode == 3
    assert cli("revoke", "--from-review", str(report)).returncode == 2
    assert cli("revoke", "pipe", "--from-review", str(report), "--unused").returncode == 2
    done = cli("revoke", "--from-review", str(report), "--unused")
    assert done.returncode == 0, done.stderr
    assert "revoked pipe on connections/** (inject,list)" in done.stdout
    assert "revoked view on teams/** (list)" in done.stdout
    assert "left idle on teams/a/**: changed since the review" in done.stdout
    assert {(g.principal, g.pattern) for g in access.policy(admin)} >= {
        ("pipe", "ml/**"), ("pipe", "ml/openai/**"), ("idle", "teams/a/**")}
    assert ("pipe", "connections/**") not in {(g.principal, g.pattern)
                                             for g in access.policy(admin)}
    review_id = env.vault.insight.verify_review(admin, report.read_bytes()).review_id
    revoked = env.vault.audit.tail(admin, 2, AuditFilter(action="grant.revoke"))
    assert [r.path for r in revoked] == ["connections/**", "teams/**"]
    assert all(r.context["review"] == review_id and r.context["review_flag"] == "unused"
               for r in revoked)
    summary = env.vault.audit.tail(admin, 1, AuditFilter(action="review.revoke"))[-1]
    assert review_id in summary.reason and "revoked 2 unused grant(s)" in summary.reason
    # run again: nothing is left to revoke, and it says so
    twice = cli("revoke", "--from-review", str(report), "--unused")
    assert twice.returncode == 0 and "pipe on connections/**: no longer granted" in twice.stdout
    # a deny on the same pattern would be lifted too: such a grant is left
    access.grant(admin, "pipe", "connections/**", ["inject"])
    access.grant(admin, "pipe", "connections/**", ["read"], deny=True)
    backdate(env, "pipe", "connections/**")
    fresh = tmp_path / "again.json"
    fresh.write_bytes(env.vault.insight.review(scene.auditor, window="90d").files["json"])
    kept = cli("revoke", "--from-review", str(fresh), "--unused")
    assert "an explicit deny shares the pattern" in kept.stdout
    assert ("pipe", "connections/**", "deny") in {
        (g.principal, g.pattern, g.effect) for g in access.policy(admin)}


def test_a_tampered_review_revokes_nothing(scene: Scene, tmp_path: Path) -> None:
    env = scene.env
    made = env.vault.insight.review(scene.auditor, window="90d")
    document = json.loads(made.files["json"])
    document["review"]["unused_grants"].append({
        "principal": "pipe", "role": "pipeline", "pattern": "ml/**", "capabilities": "inject",
        "created_at": document["review"]["unused_grants"][0]["created_at"]})
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document))
    result = Cli(env, str(env.admin.token))("revoke", "--from-review", str(forged), "--unused")
    assert result.returncode == 5 and "was changed after it was made" in result.stderr
    assert ("pipe", "ml/**") in {(g.principal, g.pattern)
                                 for g in env.vault.access.policy(env.admin)}
    assert env.vault.audit.tail(env.admin, 1, AuditFilter(action="grant.revoke")) == []


# -- the console's button ------------------------------------------------------------------------
def test_post_review_makes_one_in_each_format(scene: Scene) -> None:
    env = scene.env
    with TestClient(create_app(lambda: env.settings)) as client:
        def post(caller: Caller, body: dict[str, Any] | None) -> Any:
            return client.post("/v1/review", json=body,
                               headers={"authorization": f"Bearer {caller.token}"})

        for kind, media in (("json", "application/json"), ("html", "text/html"),
                            ("csv", "text/csv")):
            response = post(scene.auditor, {"since": "7d", "format": kind})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith(media)
            assert "attachment" in response.headers["content-disposition"]
            assert response.headers["cache-control"] == "no-store"
            check = env.vault.insight.verify_review(env.admin, response.content)
            assert check.kind == kind and check.window == "7d" and check.created_by == "aud"
            no_secret_in(scene, response.content)
        assert post(scene.auditor, None).status_code == 200  # 90d, JSON
        assert post(scene.viewer, {"since": "7d"}).status_code == 403
        assert post(scene.auditor, {"since": "7d", "format": "pdf"}).status_code == 400
        assert post(scene.auditor, {"since": "soon"}).status_code == 400
        assert post(scene.auditor, {"since": "7d", "extra": 1}).status_code == 400


def test_a_review_through_a_url_says_where_to_make_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("mls_" + "A" * 43)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLSECRETS_")}
    environ.update(MLSECRETS_HOME=str(tmp_path), MLSECRETS_URL="http://127.0.0.1:9",
                   MLSECRETS_TOKEN_FILE=str(token))
    for args in (["review", "--out", str(tmp_path / "r.html")],
                 ["review", "verify", str(token)],
                 ["revoke", "--from-review", str(token), "--unused"]):
        result = subprocess.run([*MLSECRETS, *args], capture_output=True, text=True,
                                env=environ, timeout=120, check=False)
        assert result.returncode == 1, (args, result.stderr)
        assert "not available through MLSECRETS_URL" in result.stderr
        assert "POST /v1/review" in result.stderr
