"""The access decision: deny by default, and an explicit deny wins over any allow."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_provider_mlsecrets.paths import matches
from airflow_provider_mlsecrets.policy.roles import Capability, Role


@dataclass(frozen=True)
class Rule:
    """A grant as the decision sees it."""

    pattern: str
    capabilities: frozenset[Capability]
    deny: bool


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def decide(role: Role, rules: tuple[Rule, ...] | list[Rule], capability: Capability,
           path: str | None) -> Decision:
    """Whether a principal of ``role`` with ``rules`` may use ``capability`` on ``path``.

    ``path`` is ``None`` for actions that concern no one secret (reading the audit trail,
    listing keys, managing principals): they reach every path at once, so a deny of the
    capability on *any* pattern refuses them (``**``, ``**/**`` or ``team-b/**`` alike), and
    only an allow on ``**`` or the role itself grants them.
    """
    if path is None:
        applicable = [r for r in rules if capability in r.capabilities
                      and (r.deny or r.pattern == "**")]
    else:
        applicable = [r for r in rules if capability in r.capabilities
                      and matches(r.pattern, path)]
    for rule in applicable:
        if rule.deny:
            return Decision(False, f"explicit deny of {capability.value} on {rule.pattern}"
                            + ("" if path is not None else " (this action reaches every path)"))
    if capability is Capability.GRANT and any(r.deny for r in rules):
        # Creating principals or granting could hand on what the fence withholds.
        return Decision(False, "a principal fenced by an explicit deny cannot grant or create "
                        "principals")
    spec = role.spec
    if capability not in spec.ceiling:
        return Decision(False, f"role {role.value} can never hold {capability.value}")
    if capability in spec.implicit:
        return Decision(True, f"role {role.value}")
    for rule in applicable:
        return Decision(True, f"grant of {capability.value} on {rule.pattern}")
    return Decision(False, f"no grant of {capability.value} covers "
                    f"{path if path is not None else 'this action'}")
