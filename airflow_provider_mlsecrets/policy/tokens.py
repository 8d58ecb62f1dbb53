"""Principal tokens: 256 random bits, shown once, stored only as an HSM-keyed hash.

A token is ``mls_`` followed by 43 base64url characters. What the store keeps is
``HMAC-SHA256(K_token, token)`` computed inside the HSM, so a copy of the database yields
nothing that authenticates, and cannot even be checked against a guessed token offline.
"""

from __future__ import annotations

import base64
import re
import secrets

from airflow_provider_mlsecrets.keys import KeyProvider, MacKey

PREFIX = "mls_"
_SHAPE = re.compile(r"mls_[A-Za-z0-9_-]{43}")


def new_token() -> str:
    return PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def well_formed(token: str) -> bool:
    return _SHAPE.fullmatch(token) is not None


def token_hash(keys: KeyProvider, token: str) -> bytes:
    return keys.mac(MacKey.TOKEN, token.encode("ascii"))
