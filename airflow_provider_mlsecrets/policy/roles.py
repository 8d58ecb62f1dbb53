"""Capabilities and the built-in roles.

Each role has a ceiling (the capabilities a grant may ever give it) and implicit grants
(what it holds on every path without one). Only ``security_engineer`` can hold ``read``:
plaintext back to a person. Pipelines get ``inject`` on the paths granted to them; the
rotation DAG's ``rotator`` gets ``rotate`` (and ``inject`` for the credentials its rotators
need).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from airflow_provider_mlsecrets.errors import PolicyError


class Capability(str, enum.Enum):
    READ = "read"
    INJECT = "inject"
    WRITE = "write"
    DELETE = "delete"
    DESTROY = "destroy"
    LIST = "list"
    ROTATE = "rotate"
    GRANT = "grant"
    AUDIT = "audit"


ALL = frozenset(Capability)


@dataclass(frozen=True)
class RoleSpec:
    ceiling: frozenset[Capability]
    implicit: frozenset[Capability]


class Role(str, enum.Enum):
    SECURITY_ENGINEER = "security_engineer"
    AUDITOR = "auditor"
    PIPELINE = "pipeline"
    ROTATOR = "rotator"
    VIEWER = "viewer"

    @property
    def spec(self) -> RoleSpec:
        return _SPECS[self]


_SPECS = {
    Role.SECURITY_ENGINEER: RoleSpec(ceiling=ALL, implicit=ALL),
    Role.AUDITOR: RoleSpec(ceiling=frozenset({Capability.AUDIT, Capability.LIST}),
                           implicit=frozenset({Capability.AUDIT, Capability.LIST})),
    Role.PIPELINE: RoleSpec(ceiling=frozenset({Capability.INJECT, Capability.LIST}),
                            implicit=frozenset()),
    # the rotation DAG's principal: rotates what it is granted, fetches the credentials its
    # rotators need (admin passwords) with ``inject``, verifies the audit chain, and never
    # reads a value back
    Role.ROTATOR: RoleSpec(ceiling=frozenset({Capability.ROTATE, Capability.INJECT,
                                              Capability.LIST, Capability.AUDIT}),
                           implicit=frozenset()),
    Role.VIEWER: RoleSpec(ceiling=frozenset({Capability.LIST}), implicit=frozenset()),
}


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise PolicyError(
            f"unknown role {text!r}; roles are {', '.join(r.value for r in Role)}"
        ) from None


def parse_capabilities(texts: list[str] | tuple[str, ...]) -> frozenset[Capability]:
    out = set()
    for text in texts:
        for part in text.split(","):
            try:
                out.add(Capability(part.strip()))
            except ValueError:
                raise PolicyError(
                    f"unknown capability {part!r}; capabilities are "
                    f"{', '.join(c.value for c in Capability)}"
                ) from None
    if not out:
        raise PolicyError("name at least one capability")
    return frozenset(out)


def format_capabilities(caps: frozenset[Capability] | set[Capability]) -> str:
    return ",".join(c.value for c in Capability if c in caps)
