"""A key provider that remembers what the HSM already answered, within strict bounds.

Two things are remembered, in this process's memory only, never on disk:

* **Deterministic MACs** under the token and integrity keys (a principal token's keyed
  hash, the MAC of a principal or secret row): HMAC is a function, so the answer for the
  same bytes is the same answer. A changed row has different bytes and goes to the HSM, so
  tampering is still detected on the next check. Audit seals are never remembered (each
  record is new).
* **Unwrapped data keys** for at most ``ttl`` seconds and ``uses`` unwraps each, looked up
  by the exact (KEK, wrapped key, associated data) the HSM would check, so only the very
  blob the HSM opened is answered from memory. ``ttl=0`` turns it off. Creating a KEK (a
  key rotation) forgets every data key; a disabled KEK is refused before the cache is asked
  (:func:`~airflow_provider_mlsecrets.service.keys.check_usable`), so a cached key never
  outlives its KEK's retirement in this process.

Both are bounded in entries (least recently used goes first). Python cannot wipe ``bytes``;
an entry that leaves the cache is dropped and left to the garbage collector.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from airflow_provider_mlsecrets.keys.interface import KekId, KeyInfo, KeyProvider, MacKey

MAX_ENTRIES = 4096
_DETERMINISTIC = frozenset({MacKey.TOKEN, MacKey.INTEGRITY})
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


@dataclass
class _Held:
    data_key: bytes
    expires: float
    uses_left: int


class CachingKeyProvider(KeyProvider):
    """Wrap a :class:`KeyProvider`; see the module docstring for what is remembered."""

    def __init__(self, inner: KeyProvider, *, ttl: float, uses: int,
                 max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl < 0 or uses < 1 or max_entries < 1:
            raise ValueError("ttl >= 0, uses >= 1 and max_entries >= 1")
        self.inner = inner
        self._ttl = ttl
        self._uses = uses
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._macs: OrderedDict[tuple[MacKey, bytes], bytes] = OrderedDict()
        self._data_keys: OrderedDict[tuple[str, bytes, bytes], _Held] = OrderedDict()

    def __repr__(self) -> str:
        return f"CachingKeyProvider({self.inner!r}, ttl={self._ttl}, uses={self._uses})"

    def mac(self, key: MacKey, data: bytes) -> bytes:
        if key not in _DETERMINISTIC:
            return self.inner.mac(key, data)
        slot = (key, hashlib.sha256(data).digest())
        with self._lock:
            known = self._macs.get(slot)
            if known is not None:
                self._macs.move_to_end(slot)
                return known
        value = self.inner.mac(key, data)
        with self._lock:
            self._remember(self._macs, slot, value)
        return value

    def unwrap(self, kek: KekId, wrapped: bytes, associated_data: bytes) -> bytes:
        if self._ttl == 0:
            return self.inner.unwrap(kek, wrapped, associated_data)
        slot = (str(kek), bytes(wrapped), bytes(associated_data))
        now = self._clock()
        with self._lock:
            held = self._data_keys.get(slot)
            if held is not None:
                if now < held.expires and held.uses_left > 0:
                    held.uses_left -= 1
                    self._data_keys.move_to_end(slot)
                    return held.data_key
                del self._data_keys[slot]
        data_key = self.inner.unwrap(kek, wrapped, associated_data)
        with self._lock:
            self._remember(self._data_keys, slot,
                           _Held(data_key, now + self._ttl, self._uses - 1))
        return data_key

    def wrap(self, kek: KekId, data_key: bytes, associated_data: bytes) -> bytes:
        return self.inner.wrap(kek, data_key, associated_data)

    def create_kek(self, version: int) -> KekId:
        self.forget_data_keys()
        return self.inner.create_kek(version)

    def forget_data_keys(self) -> None:
        """Drop every remembered data key (a key rotation, or an operator's request)."""
        with self._lock:
            self._data_keys.clear()

    def ensure_mac_keys(self) -> list[str]:
        created = self.inner.ensure_mac_keys()
        if created:  # a MAC key that was (re)created answers differently
            with self._lock:
                self._macs.clear()
        return created

    def describe(self, label: str) -> KeyInfo:
        return self.inner.describe(label)

    def load_data(self, name: str) -> list[bytes]:
        return self.inner.load_data(name)

    def store_data(self, name: str, value: bytes) -> None:
        self.inner.store_data(name, value)

    def check(self) -> None:
        self.inner.check()

    def _remember(self, table: OrderedDict[_K, _V], slot: _K, value: _V) -> None:
        table[slot] = value
        table.move_to_end(slot)
        while len(table) > self._max:
            table.popitem(last=False)


def uncached(keys: KeyProvider) -> KeyProvider:
    """The provider under any cache: for work whose answers must not be remembered."""
    return keys.inner if isinstance(keys, CachingKeyProvider) else keys
