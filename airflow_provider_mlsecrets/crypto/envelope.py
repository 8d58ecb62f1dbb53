"""Envelope encryption of one secret version.

Layout (format version 1), stored as three columns of the version row:

* ``nonce``       12 random bytes for the payload;
* ``ciphertext``  AES-256-GCM(data key, nonce, plaintext, payload AD): ciphertext || 16-byte tag;
* ``wrapped_key`` the 32-byte data key encrypted inside the HSM under the KEK with AES-GCM
                  and the key AD: nonce (12) || ciphertext (32) || tag (16).

``payload AD = canonical.encode(format_version, vault_id, path, version)``
``key AD     = canonical.encode(format_version, vault_id, path, version, kek_id)``

Both are bound to their vault, path and version, so moving either blob to another row makes
decryption fail; the wrapped key is bound to its KEK too, and the payload to the KEK through
its data key, which only that KEK unwraps. Keeping ``kek_id`` out of the payload AD is what
lets a key rotation re-wrap data keys without decrypting a single payload
(:meth:`Envelope.rewrap`). Every failure to open raises the same opaque
:class:`IntegrityError`.

A ``kek_id`` is checked before the HSM is asked anything: it must be a KEK label,
``<prefix>-kek-<n>`` (with ``kek_prefix``, exactly this vault's prefix). The token holds MAC
keys too; a row naming one (``<prefix>-audit-mac``) must fail as tampering, never reach the
HSM as if it were an AES key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from airflow_provider_mlsecrets import canonical
from airflow_provider_mlsecrets.errors import IntegrityError
from airflow_provider_mlsecrets.keys import KekId, KeyProvider

FORMAT_VERSION = 1
DATA_KEY_BYTES = 32
NONCE_BYTES = 12
UNAUTHENTIC = "the data could not be authenticated"
KEK_VERSION = r"-kek-[1-9][0-9]{0,8}"
_ANY_KEK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}" + KEK_VERSION)


def is_kek_label(kek_id: str, prefix: str | None = None) -> bool:
    """Whether ``kek_id`` is exactly a KEK label (``<prefix>-kek-<n>``, no leading zero), of
    the vault with ``prefix`` when one is given."""
    if prefix is None:
        return _ANY_KEK.fullmatch(kek_id) is not None
    return re.fullmatch(re.escape(prefix) + KEK_VERSION, kek_id) is not None


@dataclass(frozen=True)
class Sealed:
    """One sealed version, as the store keeps it."""

    kek_id: KekId
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Binding:
    """Where a sealed version belongs: what its associated data commits to."""

    vault_id: str
    path: str
    version: int

    def payload_ad(self, format_version: int = FORMAT_VERSION) -> bytes:
        return canonical.encode(format_version, self.vault_id, self.path, self.version)

    def key_ad(self, kek_id: str, format_version: int = FORMAT_VERSION) -> bytes:
        return canonical.encode(format_version, self.vault_id, self.path, self.version, kek_id)


class Envelope:
    """Seal and open secret versions with per-version data keys wrapped in the HSM."""

    def __init__(self, keys: KeyProvider, *, kek_prefix: str | None = None,
                 random: Callable[[int], bytes] = os.urandom):
        self._keys = keys
        self._prefix = kek_prefix
        self._random = random

    def _kek(self, kek_id: str) -> KekId:
        if not is_kek_label(kek_id, self._prefix):
            raise IntegrityError(UNAUTHENTIC)
        return KekId(kek_id)

    def seal(self, plaintext: bytes, binding: Binding, kek_id: KekId) -> Sealed:
        if not isinstance(plaintext, bytes):
            raise TypeError("plaintext must be bytes")
        kek_id = self._kek(kek_id)
        data_key = self._random(DATA_KEY_BYTES)
        nonce = self._random(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, binding.payload_ad())
        wrapped = self._keys.wrap(kek_id, data_key, binding.key_ad(kek_id))
        return Sealed(kek_id=kek_id, wrapped_key=wrapped, nonce=nonce, ciphertext=ciphertext)

    def open(self, sealed: Sealed, binding: Binding) -> bytes:
        data_key = self._unwrap(sealed, binding)
        try:
            return AESGCM(data_key).decrypt(
                sealed.nonce, sealed.ciphertext, binding.payload_ad(sealed.format_version))
        except InvalidTag:
            raise IntegrityError(UNAUTHENTIC) from None

    def rewrap(self, sealed: Sealed, binding: Binding, new_kek: KekId) -> Sealed:
        """Move the data key under ``new_kek``; the payload is not decrypted or changed."""
        new_kek = self._kek(new_kek)
        data_key = self._unwrap(sealed, binding)
        wrapped = self._keys.wrap(new_kek, data_key, binding.key_ad(new_kek))
        return Sealed(kek_id=new_kek, wrapped_key=wrapped, nonce=sealed.nonce,
                      ciphertext=sealed.ciphertext, format_version=sealed.format_version)

    def _unwrap(self, sealed: Sealed, binding: Binding) -> bytes:
        if sealed.format_version != FORMAT_VERSION or len(sealed.nonce) != NONCE_BYTES:
            raise IntegrityError(UNAUTHENTIC)
        kek_id = self._kek(sealed.kek_id)
        data_key = self._keys.unwrap(
            kek_id, sealed.wrapped_key, binding.key_ad(kek_id, sealed.format_version))
        if len(data_key) != DATA_KEY_BYTES:
            raise IntegrityError(UNAUTHENTIC)
        return data_key
