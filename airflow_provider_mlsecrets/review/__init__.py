"""Access reviews: a dated, HSM-signed report of who may reach what and who did, recorded
in the audit trail (``mlsecrets review``), provable later (``mlsecrets review verify``),
and the grants it flags revocable in one command (``mlsecrets revoke --from-review``).
The operations live on ``vault.insight`` (:meth:`~..service.insight.InsightService.review`);
this package holds what they read, render and sign."""

from __future__ import annotations

from typing import Any

from airflow_provider_mlsecrets.errors import IntegrityError
from airflow_provider_mlsecrets.review.render import data_from_html, unused_from_csv
from airflow_provider_mlsecrets.review.seal import FORMATS, Parsed, Signature, parse

__all__ = ["FORMATS", "Parsed", "Signature", "flagged_unused", "parse"]


def flagged_unused(parsed: Parsed) -> list[dict[str, Any]]:
    """The grants a (verified) review flags as unused for its window: principal, role,
    pattern, capabilities and when each was granted."""
    try:
        if parsed.kind == "json":
            return list(parsed.review["unused_grants"])
        if parsed.kind == "html":
            return list(data_from_html(parsed.body)["unused_grants"])
        return unused_from_csv(parsed.body)
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("the review's list of unused grants is unreadable") from None
