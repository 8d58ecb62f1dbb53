"""The key cache on a real SoftHSM2 token: what it answers from memory, for how long, and
that nothing it remembers outlives a tampered row, a disabled KEK or a key rotation."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from airflow_provider_mlsecrets.errors import ConfigurationError, IntegrityError
from airflow_provider_mlsecrets.keys import KekId, KeyInfo, KeyProvider, MacKey
from airflow_provider_mlsecrets.keys.cache import CachingKeyProvider
from airflow_provider_mlsecrets.keys.pkcs11 import PKCS11KeyProvider
from airflow_provider_mlsecrets.keys.softhsm import DevToken
from airflow_provider_mlsecrets.settings import Settings
from tests.conftest import Env, make_settings


class Counting(KeyProvider):
    """The real provider, with a count of what reached the HSM."""

    def __init__(self, inner: KeyProvider) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def wrap(self, kek: KekId, data_key: bytes, associated_data: bytes) -> bytes:
        self.calls["wrap"] += 1
        return self.inner.wrap(kek, data_key, associated_data)

    def unwrap(self, kek: KekId, wrapped: bytes, associated_data: bytes) -> bytes:
        self.calls["unwrap"] += 1
        return self.inner.unwrap(kek, wrapped, associated_data)

    def mac(self, key: MacKey, data: bytes) -> bytes:
        self.calls[key.value] += 1
        return self.inner.mac(key, data)

    def create_kek(self, version: int) -> KekId:
        return self.inner.create_kek(version)

    def ensure_mac_keys(self) -> list[str]:
        return self.inner.ensure_mac_keys()

    def describe(self, label: str) -> KeyInfo:
        return self.inner.describe(label)

    def check(self) -> None:
        self.inner.check()

    def load_data(self, name: str) -> list[bytes]:
        return self.inner.load_data(name)

    def store_data(self, name: str, value: bytes) -> None:
        self.inner.store_data(name, value)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hsm_keys(hsm: DevToken, tmp_path: Path) -> Counting:
    provider = PKCS11KeyProvider(make_settings(hsm, tmp_path, "sqlite://"))
    provider.create_kek(1)
    provider.ensure_mac_keys()
    return Counting(provider)



def _kek(keys: Counting) -> KekId:
    inner = keys.inner
    assert isinstance(inner, PKCS11KeyProvider)
    return KekId(f"{inner._prefix}-kek-1")


def test_a_data_key_is_answered_from_memory_only_for_the_same_blob(hsm_keys: Counting) -> None:
    cache = CachingKeyProvider(hsm_keys, ttl=60, uses=100)
    kek, data_key = _kek(hsm_keys), os.urandom(32)
    wrapped = cache.wrap(kek, data_key, b"ad-1")
    assert cache.unwrap(kek, wrapped, b"ad-1") == data_key
    assert cache.unwrap(kek, wrapped, b"ad-1") == data_key
    assert hsm_keys.calls["unwrap"] == 1
    with pytest.raises(IntegrityError):  # other associated data: the HSM is asked, and refuses
        cache.unwrap(kek, wrapped, b"ad-2")
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(IntegrityError):
        cache.unwrap(kek, tampered, b"ad-1")
    assert hsm_keys.calls["unwrap"] == 3


def test_a_data_key_is_forgotten_after_its_uses_and_its_ttl(hsm_keys: Counting) -> None:
    clock = Clock()
    cache = CachingKeyProvider(hsm_keys, ttl=30, uses=3, clock=clock)
    kek = _kek(hsm_keys)
    wrapped = cache.wrap(kek, os.urandom(32), b"ad")
    for _ in range(3):
        cache.unwrap(kek, wrapped, b"ad")
    assert hsm_keys.calls["unwrap"] == 1
    cache.unwrap(kek, wrapped, b"ad")  # a fourth use: back to the HSM
    assert hsm_keys.calls["unwrap"] == 2
    clock.now += 31
    cache.unwrap(kek, wrapped, b"ad")
    assert hsm_keys.calls["unwrap"] == 3


def test_ttl_zero_turns_the_data_key_cache_off(hsm_keys: Counting) -> None:
    cache = CachingKeyProvider(hsm_keys, ttl=0, uses=100)
    kek = _kek(hsm_keys)
    wrapped = cache.wrap(kek, os.urandom(32), b"ad")
    for _ in range(3):
        cache.unwrap(kek, wrapped, b"ad")
    assert hsm_keys.calls["unwrap"] == 3


def test_creating_a_kek_forgets_every_data_key(hsm_keys: Counting) -> None:
    cache = CachingKeyProvider(hsm_keys, ttl=60, uses=100)
    kek = _kek(hsm_keys)
    wrapped = cache.wrap(kek, os.urandom(32), b"ad")
    cache.unwrap(kek, wrapped, b"ad")
    cache.create_kek(2)
    cache.unwrap(kek, wrapped, b"ad")
    assert hsm_keys.calls["unwrap"] == 2


def test_the_cache_is_bounded(hsm_keys: Counting) -> None:
    cache = CachingKeyProvider(hsm_keys, ttl=60, uses=100, max_entries=2)
    kek = _kek(hsm_keys)
    blobs = [cache.wrap(kek, os.urandom(32), b"ad") for _ in range(3)]
    for blob in blobs:
        cache.unwrap(kek, blob, b"ad")
    cache.unwrap(kek, blobs[0], b"ad")  # the oldest was evicted
    assert hsm_keys.calls["unwrap"] == 4


def test_only_deterministic_macs_are_remembered(hsm_keys: Counting) -> None:
    cache = CachingKeyProvider(hsm_keys, ttl=60, uses=100)
    for key in MacKey:
        first = cache.mac(key, b"row bytes")
        assert cache.mac(key, b"row bytes") == first
        assert cache.mac(key, b"other bytes") != first
    assert hsm_keys.calls[MacKey.TOKEN.value] == 2
    assert hsm_keys.calls[MacKey.INTEGRITY.value] == 2
    assert hsm_keys.calls[MacKey.AUDIT.value] == 3  # every audit seal reaches the HSM


def test_repr_shows_no_key_material(hsm_keys: Counting) -> None:
    cache = CachingKeyProvider(hsm_keys, ttl=60, uses=100)
    kek = _kek(hsm_keys)
    data_key = os.urandom(32)
    cache.unwrap(kek, cache.wrap(kek, data_key, b"ad"), b"ad")
    assert data_key.hex() not in repr(cache) and "ttl=60" in repr(cache)


# -- through the vault: the cache never answers past a check ---------------------------------
def test_a_cached_lookup_still_refuses_a_disabled_kek(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/key", b"value")
    etl = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    assert env.vault.secrets.inject(etl, "ml/key") == b"value"  # the data key is now cached
    with env.vault.core.transaction() as session:
        session.execute(text("UPDATE mlsecrets_keks SET state = 'disabled'"))
    with pytest.raises(IntegrityError, match="could not be authenticated"):
        env.vault.secrets.inject(etl, "ml/key")


def test_a_cached_lookup_still_detects_a_tampered_secret_row(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/key", b"old")
    env.vault.secrets.put(env.admin, "ml/key", b"new")
    etl = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    assert env.vault.secrets.inject(etl, "ml/key") == b"new"
    with env.vault.core.transaction() as session:
        session.execute(text("UPDATE mlsecrets_secrets SET current_version = 1"))
    with pytest.raises(IntegrityError, match="ml/key was altered"):
        env.vault.secrets.inject(etl, "ml/key")


def test_a_cached_lookup_still_sees_a_revocation(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/key", b"value")
    etl = env.principal("etl", "pipeline", ("ml/**", ["inject"]))
    assert env.vault.secrets.inject(etl, "ml/key") == b"value"
    env.vault.access.revoke_principal(env.admin, "etl")
    with pytest.raises(Exception, match="revoked"):
        env.vault.secrets.inject(etl, "ml/key")


def test_cache_settings_are_validated(tmp_path: Path) -> None:
    base = {"MLSECRETS_HOME": str(tmp_path)}
    loaded = Settings.load({**base, "MLSECRETS_DATA_KEY_CACHE_TTL": "0",
                            "MLSECRETS_DATA_KEY_CACHE_USES": "5"})
    assert (loaded.data_key_cache_ttl, loaded.data_key_cache_uses) == (0, 5)
    for name, value in (("MLSECRETS_DATA_KEY_CACHE_TTL", "-1"),
                        ("MLSECRETS_DATA_KEY_CACHE_TTL", "3601"),
                        ("MLSECRETS_DATA_KEY_CACHE_USES", "0"),
                        ("MLSECRETS_DATA_KEY_CACHE_USES", "many")):
        with pytest.raises(ConfigurationError, match=name):
            Settings.load({**base, name: value})
