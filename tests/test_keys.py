"""The PKCS#11 key provider on a real SoftHSM2 token: attributes, errors, threads, forks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from airflow_provider_mlsecrets.errors import HSMUnavailable, KeyMissing, KeyProviderError
from airflow_provider_mlsecrets.keys import KekId, MacKey
from airflow_provider_mlsecrets.keys.pkcs11 import PKCS11KeyProvider
from airflow_provider_mlsecrets.keys.softhsm import DevToken
from tests.conftest import make_settings, run_forked


@pytest.fixture
def keys(hsm: DevToken, tmp_path: Path) -> PKCS11KeyProvider:
    provider = PKCS11KeyProvider(make_settings(hsm, tmp_path, "sqlite://"))
    provider.create_kek(1)
    provider.ensure_mac_keys()
    return provider


def test_kek_is_sensitive_and_never_extractable(keys: PKCS11KeyProvider) -> None:
    info = keys.describe(f"{keys._prefix}-kek-1")
    assert (info.sensitive, info.extractable) == (True, False)
    assert (info.always_sensitive, info.never_extractable) == (True, True)
    assert info.kind == "AES"
    mac = keys.describe(f"{keys._prefix}-audit-mac")
    assert (mac.sensitive, mac.extractable, mac.kind) == (True, False, "GENERIC_SECRET")


def test_mac_keys_are_created_once_and_differ(keys: PKCS11KeyProvider) -> None:
    assert keys.ensure_mac_keys() == []
    audit, token = keys.mac(MacKey.AUDIT, b"x"), keys.mac(MacKey.TOKEN, b"x")
    assert len(audit) == 32 and audit != token
    assert keys.mac(MacKey.AUDIT, b"x") == audit


def test_a_kek_cannot_be_created_twice(keys: PKCS11KeyProvider) -> None:
    with pytest.raises(KeyProviderError, match="already exists"):
        keys.create_kek(1)


def test_missing_key_is_a_clear_error(keys: PKCS11KeyProvider) -> None:
    with pytest.raises(KeyMissing, match="kek-9"):
        keys.wrap(KekId(f"{keys._prefix}-kek-9"), bytes(32), b"ad")


def test_construction_touches_nothing(hsm: DevToken, tmp_path: Path) -> None:
    provider = PKCS11KeyProvider(make_settings(hsm, tmp_path, "sqlite://",
                                               pkcs11_module="/nonexistent/lib.so"))
    assert "nonexistent" in repr(provider)  # built fine; only use fails
    with pytest.raises(HSMUnavailable, match="does not exist"):
        provider.check()


def test_no_module_configured_never_falls_back_to_software(tmp_path: Path) -> None:
    from airflow_provider_mlsecrets.settings import Settings

    with pytest.raises(KeyProviderError, match="MLSECRETS_PKCS11_MODULE"):
        PKCS11KeyProvider(Settings(home=tmp_path, db_url="sqlite://"))


def test_unknown_token_lists_the_tokens_present(hsm: DevToken, tmp_path: Path) -> None:
    provider = PKCS11KeyProvider(make_settings(hsm, tmp_path, "sqlite://",
                                               pkcs11_token="no-such-token"))
    with pytest.raises(HSMUnavailable, match=r"no token labelled 'no-such-token'.*mlsecrets-test"):
        provider.check()


def test_wrong_pin_is_a_clear_error_in_a_fresh_process(hsm: DevToken, tmp_path: Path) -> None:
    # A login holds for the whole token in a process, so the wrong PIN is tried where no
    # session is logged in yet: a fresh interpreter.
    import subprocess
    import sys

    code = (
        "from pathlib import Path\n"
        "from airflow_provider_mlsecrets.keys.pkcs11 import PKCS11KeyProvider\n"
        "from airflow_provider_mlsecrets.settings import Settings\n"
        f"s = Settings(home=Path({str(tmp_path)!r}), db_url='sqlite://', "
        f"pkcs11_module={hsm.module!r}, pkcs11_token='mlsecrets-test', pkcs11_pin='wrong-pin', "
        f"softhsm2_conf=Path({str(hsm.conf)!r}))\n"
        "try:\n    PKCS11KeyProvider(s).check()\nexcept Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.startswith("HSMUnavailable the HSM rejected the PIN"), out
    assert "wrong-pin" not in out


def test_eight_threads_share_one_token_without_corruption(keys: PKCS11KeyProvider) -> None:
    kek = KekId(f"{keys._prefix}-kek-1")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(150):
                data_key = os.urandom(32)
                ad = f"{n}/{i}".encode()
                assert keys.unwrap(kek, keys.wrap(kek, data_key, ad), ad) == data_key
                assert len(keys.mac(MacKey.AUDIT, ad)) == 32
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _use_token_in_child(keys: PKCS11KeyProvider, kek: str, wrapped: bytes) -> tuple[str, bool]:
    # The parent's session is invalid here (reset_on_fork): the provider must notice.
    data_key = keys.unwrap(KekId(kek), wrapped, b"fork")
    fresh = os.urandom(32)
    ok = keys.unwrap(KekId(kek), keys.wrap(KekId(kek), fresh, b"c"), b"c") == fresh
    return data_key.hex(), ok


def test_four_forked_children_use_the_token_after_the_parent_did(
        keys: PKCS11KeyProvider) -> None:
    kek = f"{keys._prefix}-kek-1"
    data_key = os.urandom(32)
    wrapped = keys.wrap(KekId(kek), data_key, b"fork")  # parent is logged in before forking
    results = run_forked(_use_token_in_child, [(keys, kek, wrapped)] * 4)
    assert results == [(data_key.hex(), True)] * 4
    # and the parent still works after its children used the token
    assert keys.unwrap(KekId(kek), wrapped, b"fork") == data_key
