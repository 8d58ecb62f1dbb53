"""The PKCS#11 key provider (python-pkcs11; SoftHSM2 in development, a network HSM in
production).

Lazy: the constructor only records where the token is; the first operation loads the
module and logs in (see :mod:`._session` for the fork, thread and login rules).

Data keys are wrapped with ``C_Encrypt`` under ``CKM_AES_GCM`` rather than ``C_WrapKey``
because SoftHSM2, like many HSMs, offers GCM only through encrypt/decrypt. A wrapped key
is ``nonce (12 bytes) || ciphertext (32) || tag (16)``; the nonce is random, drawn here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.mechanisms import GCMParams

from airflow_provider_mlsecrets.errors import IntegrityError, KeyMissing, KeyProviderError
from airflow_provider_mlsecrets.keys import _session
from airflow_provider_mlsecrets.keys.interface import (
    KekId,
    KeyInfo,
    KeyProvider,
    MacKey,
    kek_label,
    mac_label,
)
from airflow_provider_mlsecrets.settings import Settings

NONCE_BYTES = 12
TAG_BYTES = 16
_COMMON = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.MODIFIABLE: False,
    Attribute.DERIVE: False,
    Attribute.WRAP: False,
    Attribute.UNWRAP: False,
}
# CKA_ALLOWED_MECHANISMS: whoever holds the PIN still cannot use a KEK with anything but
# AES-GCM (no ECB oracle, no CBC), nor a MAC key with anything but HMAC-SHA256
_KEK_TEMPLATE = {**_COMMON, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                 Attribute.SIGN: False, Attribute.VERIFY: False,
                 Attribute.ALLOWED_MECHANISMS: [Mechanism.AES_GCM]}
_MAC_TEMPLATE = {**_COMMON, Attribute.ENCRYPT: False, Attribute.DECRYPT: False,
                 Attribute.SIGN: True, Attribute.VERIFY: True,
                 Attribute.ALLOWED_MECHANISMS: [Mechanism.SHA256_HMAC]}
_DATA_APPLICATION = "airflow-provider-mlsecrets"
# Failures of a decryption that mean "these bytes do not authenticate", as tokens report them.
_NOT_AUTHENTIC = (p11e.EncryptedDataInvalid, p11e.EncryptedDataLenRange, p11e.GeneralError,
                  p11e.ArgumentsBad, p11e.DataLenRange, p11e.FunctionFailed)


class PKCS11KeyProvider(KeyProvider):
    """Keys on a PKCS#11 token. Never falls back to a software key."""

    def __init__(self, settings: Settings, *, random: Callable[[int], bytes] = os.urandom):
        if not settings.pkcs11_module:
            raise KeyProviderError(
                "no PKCS#11 module configured: set MLSECRETS_PKCS11_MODULE, or run "
                "'mlsecrets init --dev' to provision a local SoftHSM2 token"
            )
        if settings.softhsm2_conf is not None:
            # SoftHSM2 reads its configuration when the module initialises.
            os.environ["SOFTHSM2_CONF"] = str(settings.softhsm2_conf)
        self._prefix = settings.key_prefix
        self._random = random
        self._address = _session.TokenAddress(
            module=settings.pkcs11_module,
            label=settings.pkcs11_token,
            read_pin=settings.read_pin,
            lock_file=settings.lock_file,
        )

    def __repr__(self) -> str:
        return f"PKCS11KeyProvider(module={self._address.module!r}, token={self._address.label!r})"

    # -- operations ------------------------------------------------------------------
    def wrap(self, kek: KekId, data_key: bytes, associated_data: bytes) -> bytes:
        nonce = self._random(NONCE_BYTES)

        def op(session: Any) -> bytes:
            key = self._secret_key(kek, KeyType.AES)
            out: bytes = key.encrypt(data_key, mechanism=Mechanism.AES_GCM,
                                     mechanism_param=GCMParams(nonce, associated_data))
            return out

        return nonce + _session.run(self._address, op)

    def unwrap(self, kek: KekId, wrapped: bytes, associated_data: bytes) -> bytes:
        if len(wrapped) <= NONCE_BYTES + TAG_BYTES:
            raise IntegrityError("the data could not be authenticated")
        nonce, body = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]

        def op(session: Any) -> bytes:
            key = self._secret_key(kek, KeyType.AES)
            try:
                out: bytes = key.decrypt(body, mechanism=Mechanism.AES_GCM,
                                         mechanism_param=GCMParams(nonce, associated_data))
            except _NOT_AUTHENTIC:
                raise IntegrityError("the data could not be authenticated") from None
            return out

        return _session.run(self._address, op)

    def mac(self, key: MacKey, data: bytes) -> bytes:
        label = mac_label(self._prefix, key)

        def op(session: Any) -> bytes:
            out: bytes = self._secret_key(label, KeyType.GENERIC_SECRET).sign(
                data, mechanism=Mechanism.SHA256_HMAC)
            return out

        return _session.run(self._address, op)

    # -- key management --------------------------------------------------------------
    def create_kek(self, version: int) -> KekId:
        label = kek_label(self._prefix, version)
        self._generate(label, KeyType.AES, 256, _KEK_TEMPLATE)
        return label

    def ensure_mac_keys(self) -> list[str]:
        created = []
        for key in MacKey:
            label = mac_label(self._prefix, key)
            if not self._exists(label):
                self._generate(label, KeyType.GENERIC_SECRET, 256, _MAC_TEMPLATE)
                created.append(label)
        return created

    def describe(self, label: str) -> KeyInfo:
        def op(session: Any) -> KeyInfo:
            key = self._find(session, label)
            attrs = key.get_attributes([Attribute.SENSITIVE, Attribute.EXTRACTABLE,
                                        Attribute.ALWAYS_SENSITIVE, Attribute.NEVER_EXTRACTABLE])
            return KeyInfo(label=label, kind=key.key_type.name,
                           sensitive=bool(attrs[Attribute.SENSITIVE]),
                           extractable=bool(attrs[Attribute.EXTRACTABLE]),
                           always_sensitive=bool(attrs[Attribute.ALWAYS_SENSITIVE]),
                           never_extractable=bool(attrs[Attribute.NEVER_EXTRACTABLE]))

        return _session.run(self._address, op)

    def load_data(self, name: str) -> list[bytes]:
        label = f"{self._prefix}-{name}"

        def op(session: Any) -> list[bytes]:
            return [bytes(o[Attribute.VALUE]) for o in _data_objects(session, label)]

        return _session.run(self._address, op)

    def store_data(self, name: str, value: bytes) -> None:
        label = f"{self._prefix}-{name}"

        def op(session: Any) -> None:
            # SoftHSM2 (like many tokens) keeps CKA_VALUE of a data object read-only, so
            # a new value is a new object, created before the old ones go
            older = _data_objects(session, label)
            if not any(bytes(o[Attribute.VALUE]) == value for o in older):
                session.create_object({
                    Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label,
                    Attribute.APPLICATION: _DATA_APPLICATION, Attribute.TOKEN: True,
                    Attribute.PRIVATE: True, Attribute.VALUE: value})
            for o in older:
                if bytes(o[Attribute.VALUE]) != value:
                    o.destroy()

        _session.run(self._address, op)

    def check(self) -> None:
        _session.run(self._address, lambda session: None)

    # -- helpers ---------------------------------------------------------------------
    def _secret_key(self, label: str, key_type: KeyType) -> Any:
        return _session.cached_object(self._address, label,
                                      lambda s: self._find(s, label, key_type))

    def _find(self, session: Any, label: str, key_type: KeyType | None = None) -> Any:
        try:
            return session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=key_type,
                                   label=label)
        except p11e.NoSuchKey:
            raise KeyMissing(
                f"key {label!r} is not on token {self._address.label!r}; was the token "
                "replaced, or MLSECRETS_KEY_PREFIX changed?"
            ) from None
        except p11e.MultipleObjectsReturned:
            raise KeyProviderError(
                f"more than one key on the token is labelled {label!r}") from None

    def _exists(self, label: str) -> bool:
        def op(session: Any) -> bool:
            return _count(session, label) > 0

        return _session.run(self._address, op)

    def _generate(self, label: str, key_type: KeyType, bits: int, template: dict[Any, Any]) -> None:
        def op(session: Any) -> None:
            if _count(session, label) > 0:
                raise KeyProviderError(f"a key labelled {label!r} already exists on the token")
            session.generate_key(key_type, bits, label=label, id=label.encode(), store=True,
                                 template=template)

        _session.run(self._address, op, retry=False)


def _data_objects(session: Any, label: str) -> list[Any]:
    return list(session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label}))


def _count(session: Any, label: str) -> int:
    """How many secret keys carry ``label``; the search is run to its end, so its handle is
    closed now and not by the garbage collector after the session may be gone."""
    return len(list(session.get_objects(
        {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label})))
