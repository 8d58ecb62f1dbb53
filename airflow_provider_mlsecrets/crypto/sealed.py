"""Sealed values: a secret as a token that is safe to commit to git.

``mlsealed1.`` + base64url(canonical.encode(format_version, kek_id, wrapped_key, nonce,
ciphertext)), sealed by :class:`Envelope` with the binding (vault id, path, version 0).
Version 0 is never a stored version, so a sealed value and a stored secret can never stand
in for each other; the path is bound in, so a token pasted under another path, or into
another vault, does not open. Every malformed or tampered token raises the same opaque
:class:`IntegrityError`.
"""

from __future__ import annotations

import base64
import binascii
import re

from airflow_provider_mlsecrets import canonical
from airflow_provider_mlsecrets.crypto.envelope import Binding, Sealed
from airflow_provider_mlsecrets.errors import IntegrityError
from airflow_provider_mlsecrets.keys import KekId

PREFIX = "mlsealed1."
_KEK_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}-kek-[1-9][0-9]{0,8}")
SEALED_VERSION = 0


def binding(vault_id: str, path: str) -> Binding:
    return Binding(vault_id=vault_id, path=path, version=SEALED_VERSION)


def to_token(sealed: Sealed) -> str:
    data = canonical.encode(sealed.format_version, sealed.kek_id, sealed.wrapped_key,
                            sealed.nonce, sealed.ciphertext)
    return PREFIX + base64.urlsafe_b64encode(data).decode().rstrip("=")


def from_token(token: str) -> Sealed:
    try:
        if not token.startswith(PREFIX):
            raise ValueError("prefix")
        body = token[len(PREFIX):]
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        version, kek_id, wrapped_key, nonce, ciphertext = canonical.decode(data)
        if len(version) != 8 or not _KEK_LABEL.fullmatch(kek_id.decode("ascii")):
            raise ValueError("kek label")
        return Sealed(kek_id=KekId(kek_id.decode("ascii")), wrapped_key=wrapped_key,
                      nonce=nonce, ciphertext=ciphertext,
                      format_version=int.from_bytes(version, "big"))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise IntegrityError("the data could not be authenticated") from None
