"""The row-MAC known answers printed in docs/formats.md, recomputed (no HSM: the HMAC key is
the documented test key), so the document and the code cannot drift apart."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service._integrity import _secret_bytes
from airflow_provider_mlsecrets.store.models import Secret

ROOT = Path(__file__).resolve().parent.parent
VAULT = "0b5e7b3e-0000-4000-8000-000000000001"
KEY = b"\x42" * 32
POLICY = ('{"config":{"alphabet":"hex","length":48},"grace":"1h","retention":"30d",'
          '"rotator":"random","schedule":"30d"}')


def test_policy_json_is_canonical() -> None:
    assert RotationPolicy(schedule="30d", rotator="random",
                          config={"length": 48, "alphabet": "hex"}).to_json() == POLICY


@pytest.mark.parametrize(("max_versions", "rotation", "want"), [
    (None, None, "5b472400923a081b6bd3be99ff09c7a6b659ffc4242a11384d4edc536e38db31"),
    (5, None, "b1760ea16ea9ee23747bd69f12bbe78722e03e99d57dbbeaf224e781f24f56cd"),
    (None, POLICY, "5c70039e45ce5e2de82398dcddfb96579301a679697cccc3bb4e8780de695fb0")])
def test_secret_row_mac_known_answers(max_versions: int | None, rotation: str | None,
                                      want: str) -> None:
    row = Secret(path="ml/openai/api_key", latest_version=3, current_version=3,
                 deleted_at=None, max_versions=max_versions, rotation=rotation)
    assert hmac.new(KEY, _secret_bytes(VAULT, row), hashlib.sha256).hexdigest() == want
    assert want in (ROOT / "docs" / "formats.md").read_text()


def test_break_glass_row_mac_known_answers() -> None:
    from datetime import datetime, timezone

    from airflow_provider_mlsecrets.service._integrity import _policy_bytes, _request_bytes
    from airflow_provider_mlsecrets.store.models import AccessRequest, VaultPolicy

    def at(minute: int) -> datetime:
        return datetime(2026, 12, 3, 9, minute, tzinfo=timezone.utc)

    policy = VaultPolicy(name="critical", value='["prod/**"]', changed_by="alice",
                         changed_at=at(0))
    request = AccessRequest(id="3f2a" + "0" * 28, principal="alice",
                            path="prod/payments/api_key",
                            justification="INC-4711: provider rotated", window_seconds=900,
                            requested_at=at(0), state="approved", decided_by="carol",
                            decided_at=at(5), expires_at=at(20))
    doc = (ROOT / "docs" / "formats.md").read_text()
    for data, want in ((_policy_bytes(VAULT, policy),
                        "58463d934c711a188ee5c6a59fd3366a6fa19a697d69aca6ba4d95dea30fa066"),
                       (_request_bytes(VAULT, request),
                        "f18a4bab5e95aacaffed9f05893e4078a55d8267e58a769be7072453a2dbcea5")):
        assert hmac.new(KEY, data, hashlib.sha256).hexdigest() == want
        assert want in doc


def test_generation_row_mac_known_answers() -> None:
    """From generation 1 on, the -v2 encodings (the generation after the tag); at 0, -v1."""
    from datetime import datetime, timezone

    from airflow_provider_mlsecrets.service._integrity import _principal_bytes
    from airflow_provider_mlsecrets.store.models import Grant, Principal

    doc = (ROOT / "docs" / "formats.md").read_text()
    secret = Secret(path="ml/openai/api_key", latest_version=3, current_version=3,
                    deleted_at=None, max_versions=None, rotation=None, generation=7)
    data = _secret_bytes(VAULT, secret)
    assert data.startswith(bytes.fromhex("00000013" + b"mlsecrets-secret-v2".hex()
                                         + "00000008" + "0000000000000007"))
    want = "a685551e7c55add061c0a98799fc9823c0b0c4a4e6c7c5b6c51d068217616a1a"
    assert hmac.new(KEY, data, hashlib.sha256).hexdigest() == want and want in doc
    grants = [Grant(pattern="ml/**", effect="allow", capabilities="inject,list"),
              Grant(pattern="ml/prod/**", effect="deny", capabilities="inject")]
    principal = Principal(name="etl", role="pipeline", token_hash=b"\x11" * 32,
                          expires_at=datetime(2027, 1, 31, tzinfo=timezone.utc),
                          revoked_at=None, generation=2)
    want = "d190ee8bf6fda250021624e443e8e862c92f0b0f72182e119baf3be986aa9fe6"
    got = hmac.new(KEY, _principal_bytes(VAULT, principal, grants), hashlib.sha256)
    assert got.hexdigest() == want and want in doc
    principal.generation = 0
    got = hmac.new(KEY, _principal_bytes(VAULT, principal, grants), hashlib.sha256)
    assert got.hexdigest().startswith("6a5edb95")
