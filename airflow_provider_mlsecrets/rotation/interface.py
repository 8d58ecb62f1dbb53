"""The rotator plugin interface: four small methods a service integration implements.

A rotator never stores anything: the engine persists the pending value (encrypted) before
``set`` runs, so every step can be repeated after a crash with the same value. Each method
must therefore be idempotent: ``set`` twice with the same value, ``invalidate`` of a value
already invalid, ``test`` any number of times.

Plugins are found through the entry point group ``airflow_provider_mlsecrets.rotators``::

    [project.entry-points."airflow_provider_mlsecrets.rotators"]
    mine = "my_package.rotator:MyRotator"
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from airflow_provider_mlsecrets.errors import InvalidInput, MLSecretsError


class RotatorError(MLSecretsError):
    """A rotator step failed at its service. The message says what failed and never holds a
    value (the engine also redacts every value it knows before recording it)."""


@dataclass(frozen=True)
class RotationContext:
    """What a rotator may know while rotating the secret at ``path``.

    ``current`` is the value being replaced (``None`` for a secret with no current version);
    ``secret(other_path)`` fetches another vault secret the rotator needs, such as admin
    credentials, audited as an ``inject`` by the rotating principal."""

    path: str
    current: bytes | None = field(repr=False)
    secret: Callable[[str], bytes] = field(repr=False)


class Rotator(abc.ABC):
    """Base class of every rotator. ``config`` is the JSON object of the secret's rotation
    policy; validate it in ``__init__`` and raise :class:`InvalidInput` naming the key to
    fix. Configuration holds no secret: name other vault paths instead."""

    name: ClassVar[str]

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def secret_paths(self) -> list[str]:
        """The vault paths this configuration makes the rotator fetch (``ctx.secret``).
        Setting the policy needs ``read`` on each: a policy decides where they are sent."""
        return []

    @abc.abstractmethod
    def create(self, ctx: RotationContext) -> bytes:
        """A new value (a service that issues keys issues one here)."""

    def set(self, ctx: RotationContext, pending: bytes) -> None:  # noqa: B027 - optional
        """Make the service accept ``pending`` (nothing to do for a value the service
        issued in :meth:`create` or one only the vault knows)."""

    def test(self, ctx: RotationContext, pending: bytes) -> None:  # noqa: B027 - optional
        """Raise :class:`RotatorError` unless ``pending`` works at the service."""

    def invalidate(self, ctx: RotationContext, previous: bytes) -> None:  # noqa: B027
        """Make ``previous`` stop working at the service (after the grace period)."""


def config_str(config: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    """A required (or defaulted) string setting of a rotator's configuration."""
    value = config.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"rotator configuration: {key!r} must be a non-empty string")
    return value


def config_int(config: Mapping[str, Any], key: str, *, default: int, low: int,
               high: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(
            f"rotator configuration: {key!r} must be a whole number from {low} to {high}")
    return value
