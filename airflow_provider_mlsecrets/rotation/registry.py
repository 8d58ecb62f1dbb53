"""Finding rotators: the entry point group ``airflow_provider_mlsecrets.rotators``."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.rotation.interface import Rotator

GROUP = "airflow_provider_mlsecrets.rotators"


def available() -> dict[str, str]:
    """Rotator name → the object reference its entry point names."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def load_rotator(name: str, config: Mapping[str, Any]) -> Rotator:
    """The rotator ``name`` configured with ``config`` (validated by the rotator)."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        names = ", ".join(sorted(available())) or "none (is the package installed?)"
        raise InvalidInput(f"unknown rotator {name!r}; installed rotators: {names}")
    cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Rotator)):
        raise InvalidInput(f"rotator {name!r} ({found[0].value}) is not a Rotator subclass")
    return cls(config)
