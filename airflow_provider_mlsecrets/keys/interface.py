"""The key provider interface: everything the vault asks of an HSM.

Two families of keys live behind it and never leave it:

* key-encryption keys (KEKs), AES-256, labelled ``<prefix>-kek-<n>``, which wrap each
  secret version's data key with AES-GCM and associated data;
* MAC keys, generic secrets used for HMAC-SHA256: ``<prefix>-audit-mac`` seals the audit
  chain, ``<prefix>-token-mac`` turns principal tokens into the keyed hashes we store, and
  ``<prefix>-integrity-mac`` authenticates the rows that decide access (principals, grants)
  and which version of a secret is served.

Beside the keys, the token keeps small **data objects** the vault must be able to trust
without trusting its database: the audit trail's high-water marks (docs/formats.md). They
are private token objects, readable and writable only after login.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NewType

KekId = NewType("KekId", str)


class MacKey(enum.Enum):
    """Which HSM MAC key an HMAC is computed with."""

    AUDIT = "audit-mac"
    TOKEN = "token-mac"  # noqa: S105 - a key label, not a password # nosec B105
    INTEGRITY = "integrity-mac"


@dataclass(frozen=True)
class KeyInfo:
    """What the token says about one of our keys (attributes, never the key)."""

    label: str
    kind: str
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool


def kek_label(prefix: str, version: int) -> KekId:
    return KekId(f"{prefix}-kek-{version}")


def mac_label(prefix: str, key: MacKey) -> str:
    return f"{prefix}-{key.value}"


class KeyProvider(ABC):
    """Wrap and unwrap data keys, compute MACs, and manage key versions inside an HSM."""

    @abstractmethod
    def wrap(self, kek: KekId, data_key: bytes, associated_data: bytes) -> bytes:
        """Encrypt ``data_key`` under ``kek``; the result carries its own nonce and tag."""

    @abstractmethod
    def unwrap(self, kek: KekId, wrapped: bytes, associated_data: bytes) -> bytes:
        """Invert :meth:`wrap`; raise :class:`IntegrityError` on any mismatch."""

    @abstractmethod
    def mac(self, key: MacKey, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under the named MAC key."""

    @abstractmethod
    def create_kek(self, version: int) -> KekId:
        """Generate KEK ``version`` inside the HSM (sensitive, never extractable)."""

    @abstractmethod
    def ensure_mac_keys(self) -> list[str]:
        """Generate any missing MAC key; return the labels that were created."""

    @abstractmethod
    def describe(self, label: str) -> KeyInfo:
        """The security attributes of one key; :class:`KeyMissing` if absent."""

    @abstractmethod
    def load_data(self, name: str) -> list[bytes]:
        """The values of every data object called ``name`` (``<prefix>-<name>`` on the
        token), in no particular order; empty if there is none."""

    @abstractmethod
    def store_data(self, name: str, value: bytes) -> None:
        """Make ``value`` the one data object called ``name``: the new object is created
        before any older one is destroyed, so a failure in between leaves both, never
        neither (readers pick by what the values say)."""

    @abstractmethod
    def check(self) -> None:
        """Reach the HSM and log in, or raise :class:`HSMUnavailable` saying why."""
