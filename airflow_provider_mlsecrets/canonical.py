"""The one canonical encoding, used wherever bytes are authenticated.

``encode(f1, …, fn) = u32be(len(f1)) || f1 || … || u32be(len(fn)) || fn``

Fields are bytes, UTF-8 text, or unsigned integers (8 bytes, big-endian). The length
prefix makes the encoding injective: no two field lists encode to the same bytes, so a
value cannot be shifted from one field into its neighbour. Both the envelope's
associated data and the audit record hash are built with it (docs/formats.md).
"""

from __future__ import annotations

import struct

Field = bytes | str | int


def field_bytes(value: Field) -> bytes:
    if isinstance(value, bool):
        raise TypeError("booleans have no canonical encoding; use an int")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("canonical integers are unsigned")
        return value.to_bytes(8, "big")
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise TypeError(f"no canonical encoding for {type(value).__name__}")


def length_prefix(size: int) -> bytes:
    """``u32be(size)``, the prefix of a field of ``size`` bytes."""
    return struct.pack(">I", size)


def prefixed(value: Field) -> bytes:
    """One field as :func:`encode` writes it: its length prefix, then its bytes."""
    data = field_bytes(value)
    return struct.pack(">I", len(data)) + data


def encode(*fields: Field) -> bytes:
    return b"".join([prefixed(value) for value in fields])


def decode(data: bytes) -> list[bytes]:
    """Invert :func:`encode` (fields come back as bytes); ``ValueError`` if malformed."""
    fields, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise ValueError("truncated length prefix")
        (size,) = struct.unpack_from(">I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise ValueError("truncated field")
        fields.append(data[offset:offset + size])
        offset += size
    return fields
