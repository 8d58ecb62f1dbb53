"""``random``: a new random token that only the vault knows (API keys the pipeline itself
checks, signing secrets, tokens handed to a service through another channel)."""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from typing import Any

from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.rotation.interface import RotationContext, Rotator, config_int

ALPHABETS = {
    "alphanumeric": string.ascii_letters + string.digits,
    "hex": "0123456789abcdef",
    "urlsafe": string.ascii_letters + string.digits + "-_",
    "printable": string.ascii_letters + string.digits + "!#$%&()*+,-./:;<=>?@[]^_{|}~",
}


class RandomRotator(Rotator):
    """Config: ``length`` (default 32, 8 to 4096 characters) and ``alphabet`` (one of
    ``alphanumeric``, ``hex``, ``urlsafe``, ``printable``, or the characters themselves,
    at least 2 distinct, ASCII). Each character is drawn with :mod:`secrets`."""

    name = "random"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.length = config_int(config, "length", default=32, low=8, high=4096)
        alphabet = config.get("alphabet", "alphanumeric")
        if not isinstance(alphabet, str):
            raise InvalidInput("rotator configuration: 'alphabet' must be a string")
        chars = ALPHABETS.get(alphabet, alphabet)
        distinct = "".join(sorted(set(chars)))
        if len(distinct) < 2 or not distinct.isascii() or not distinct.isprintable():
            raise InvalidInput(
                "rotator configuration: 'alphabet' must name one of "
                f"{', '.join(ALPHABETS)} or give at least 2 distinct printable ASCII characters")
        self.alphabet = distinct

    def create(self, ctx: RotationContext) -> bytes:
        return "".join(secrets.choice(self.alphabet) for _ in range(self.length)).encode()
