"""The envelope on a real SoftHSM2 token: known answers, tampering, relocation, rewrap."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pkcs11 import Attribute, KeyType, ObjectClass

from airflow_provider_mlsecrets import canonical
from airflow_provider_mlsecrets.crypto.envelope import Binding, Envelope, Sealed
from airflow_provider_mlsecrets.errors import IntegrityError
from airflow_provider_mlsecrets.keys import KekId, _session
from airflow_provider_mlsecrets.keys.pkcs11 import PKCS11KeyProvider
from airflow_provider_mlsecrets.keys.softhsm import DevToken
from tests.conftest import make_settings

VECTORS = json.loads((Path(__file__).with_name("vectors") / "envelope.json").read_text())
BINDING = Binding(vault_id="0b5e7b3e-0000-4000-8000-000000000001", path="ml/openai/api_key",
                  version=3)


def counter_random() -> Any:
    """Deterministic 'randomness' for known-answer tests: 0x00, 0x01, 0x02, … in order."""
    counter = itertools.count()
    return lambda n: bytes(next(counter) % 256 for _ in range(n))


@pytest.fixture(scope="module")
def provider(hsm: DevToken, tmp_path_factory: pytest.TempPathFactory) -> PKCS11KeyProvider:
    settings = make_settings(hsm, tmp_path_factory.mktemp("env"), "sqlite://")
    keys = PKCS11KeyProvider(settings)
    keys.create_kek(1)
    keys.create_kek(2)
    return keys


@pytest.fixture(scope="module")
def known_kek(hsm: DevToken,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[PKCS11KeyProvider, KekId]:
    """A KEK with a known value, imported for the known-answer test only (session object)."""
    settings = make_settings(hsm, tmp_path_factory.mktemp("kat"), "sqlite://", key_prefix="kat")
    keys = PKCS11KeyProvider(settings, random=counter_random())
    label = KekId("kat-kek-1")

    def create(session: Any) -> None:
        session.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: bytes.fromhex(VECTORS["kek"]), Attribute.LABEL: label,
            Attribute.TOKEN: False, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
            Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})

    _session.run(keys._address, create)
    return keys, label


def test_associated_data_known_answer() -> None:
    assert BINDING.payload_ad().hex() == VECTORS["payload_ad"]
    assert BINDING.key_ad("mlsecrets-kek-1").hex() == VECTORS["key_ad"]
    assert canonical.encode(1, "a", b"\x00") == bytes.fromhex(
        "00000008" "0000000000000001" "00000001" "61" "00000001" "00")


def test_envelope_known_answer(known_kek: tuple[PKCS11KeyProvider, KekId]) -> None:
    keys, label = known_kek
    envelope = Envelope(keys, random=counter_random())
    sealed = envelope.seal(VECTORS["plaintext"].encode(), BINDING, label)
    assert sealed.nonce.hex() == VECTORS["nonce"]
    assert sealed.ciphertext.hex() == VECTORS["ciphertext"]
    assert sealed.wrapped_key.hex() == VECTORS["wrapped_key"]
    assert envelope.open(sealed, BINDING) == VECTORS["plaintext"].encode()


def test_round_trip_with_fresh_keys_and_nonces(provider: PKCS11KeyProvider) -> None:
    envelope = Envelope(provider)
    a = envelope.seal(b"value", BINDING, KekId(_kek(provider, 1)))
    b = envelope.seal(b"value", BINDING, KekId(_kek(provider, 1)))
    assert a.nonce != b.nonce and a.ciphertext != b.ciphertext and a.wrapped_key != b.wrapped_key
    assert envelope.open(a, BINDING) == envelope.open(b, BINDING) == b"value"
    assert len(a.wrapped_key) == 12 + 32 + 16
    assert len(a.ciphertext) == len(b"value") + 16


def _kek(provider: PKCS11KeyProvider, version: int) -> str:
    return f"{provider._prefix}-kek-{version}"


def _flips(blob: bytes) -> list[bytes]:
    return [blob[:i] + bytes([blob[i] ^ (1 << bit)]) + blob[i + 1:]
            for i in range(len(blob)) for bit in (0, 7)]


@pytest.mark.parametrize("field", ["ciphertext", "wrapped_key", "nonce"])
def test_every_bit_flip_and_truncation_fails_with_the_same_opaque_error(
        provider: PKCS11KeyProvider, field: str) -> None:
    envelope = Envelope(provider)
    sealed = envelope.seal(b"s3cret-value", BINDING, KekId(_kek(provider, 1)))
    blob: bytes = getattr(sealed, field)
    variants = [*_flips(blob), blob[:-1], blob[:1], b"", blob + b"\x00"]
    for variant in variants:
        with pytest.raises(IntegrityError) as info:
            envelope.open(dataclasses.replace(sealed, **{field: variant}), BINDING)
        assert str(info.value) == "the data could not be authenticated"


@pytest.mark.parametrize("moved", [
    dataclasses.replace(BINDING, path="ml/other/key"),
    dataclasses.replace(BINDING, version=4),
    dataclasses.replace(BINDING, vault_id="0b5e7b3e-0000-4000-8000-000000000002"),
])
def test_relocated_versions_fail(provider: PKCS11KeyProvider, moved: Binding) -> None:
    envelope = Envelope(provider)
    sealed = envelope.seal(b"value", BINDING, KekId(_kek(provider, 1)))
    with pytest.raises(IntegrityError):
        envelope.open(sealed, moved)


def test_a_changed_kek_id_or_format_fails(provider: PKCS11KeyProvider) -> None:
    envelope = Envelope(provider)
    sealed = envelope.seal(b"value", BINDING, KekId(_kek(provider, 1)))
    with pytest.raises(IntegrityError):
        envelope.open(dataclasses.replace(sealed, kek_id=KekId(_kek(provider, 2))), BINDING)
    with pytest.raises(IntegrityError):
        envelope.open(dataclasses.replace(sealed, format_version=2), BINDING)


def test_swapping_wrapped_keys_between_versions_fails(provider: PKCS11KeyProvider) -> None:
    envelope = Envelope(provider)
    other = dataclasses.replace(BINDING, version=4)
    a = envelope.seal(b"first", BINDING, KekId(_kek(provider, 1)))
    b = envelope.seal(b"second", other, KekId(_kek(provider, 1)))
    for mixed in (dataclasses.replace(a, wrapped_key=b.wrapped_key),
                  dataclasses.replace(a, ciphertext=b.ciphertext, nonce=b.nonce)):
        with pytest.raises(IntegrityError):
            envelope.open(mixed, BINDING)
    with pytest.raises(IntegrityError):
        envelope.open(b, BINDING)  # a whole sealed version moved to another version number


def test_rewrap_moves_the_key_and_leaves_the_payload_untouched(
        provider: PKCS11KeyProvider) -> None:
    envelope = Envelope(provider)
    sealed = envelope.seal(b"value", BINDING, KekId(_kek(provider, 1)))
    moved = envelope.rewrap(sealed, BINDING, KekId(_kek(provider, 2)))
    assert moved.kek_id == _kek(provider, 2)
    assert (moved.nonce, moved.ciphertext) == (sealed.nonce, sealed.ciphertext)
    assert moved.wrapped_key != sealed.wrapped_key
    assert envelope.open(moved, BINDING) == b"value"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.binary(min_size=1, max_size=4096),
       path=st.from_regex(r"[a-z0-9_]{1,10}(/[a-z0-9_.\-]{1,10}){0,4}", fullmatch=True),
       version=st.integers(min_value=1, max_value=2**40))
def test_property_round_trip_and_binding(provider: PKCS11KeyProvider, value: bytes, path: str,
                                         version: int) -> None:
    envelope = Envelope(provider)
    binding = Binding(vault_id="v", path=path, version=version)
    sealed = envelope.seal(value, binding, KekId(_kek(provider, 1)))
    assert value not in sealed.ciphertext or len(value) < 4
    assert envelope.open(sealed, binding) == value
    with pytest.raises(IntegrityError):
        envelope.open(sealed, dataclasses.replace(binding, version=version + 1))


def test_sealed_values_carry_no_nonce_parameter_in_the_public_api() -> None:
    import inspect

    assert "nonce" not in inspect.signature(Envelope.seal).parameters
    assert {f.name for f in dataclasses.fields(Sealed)} >= {"nonce", "wrapped_key", "ciphertext"}
