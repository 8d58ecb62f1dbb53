"""``SecretValue``: a plaintext that does not show itself.

A value held in a ``str`` escapes through every ``repr``, f-string, log line, exception
message, XCom and rendered template that touches it. A ``SecretValue`` renders as
``SecretValue(***)`` everywhere, refuses to be pickled, copied into JSON or used as a dict
key, compares in constant time, and gives its plaintext only when asked by name
(:meth:`reveal`, :meth:`reveal_bytes`), so the place that uses it is the one place that
shows it.
"""

from __future__ import annotations

import hmac
from typing import Any, NoReturn

_SHOWN = "SecretValue(***)"


class SecretValue:
    __slots__ = ("__value",)

    def __init__(self, value: bytes | str) -> None:
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes):
            raise TypeError("a SecretValue holds bytes or text")
        self.__value = value

    def reveal(self) -> str:
        """The plaintext as text (UTF-8)."""
        return self.__value.decode("utf-8")

    def reveal_bytes(self) -> bytes:
        """The plaintext as bytes."""
        return self.__value

    def __repr__(self) -> str:
        return _SHOWN

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return _SHOWN

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        return hmac.compare_digest(self.__value, other.__value)

    __hash__ = None  # type: ignore[assignment]  # a plaintext must not become a dict key

    def __bool__(self) -> bool:
        return bool(self.__value)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("a SecretValue is never pickled (XCom, multiprocessing, caches): "
                        "pass its vault path instead")

    def __copy__(self) -> SecretValue:
        return self

    def __deepcopy__(self, memo: Any) -> SecretValue:
        return self
