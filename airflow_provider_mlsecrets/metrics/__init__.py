"""The vault's metrics, through Airflow's own (StatsD or OpenTelemetry, as ``[metrics]``
configures it); every name is in docs/metrics.md.

Each function returns at once when metrics are off or not ready, and never raises: the
audited path must not wait on, or fail because of, a metrics backend. Tags carry the
action, the outcome, the kind of lookup and (for injections) the DAG, never a path: a path
is not a value, but there are as many as there are secrets, and a tag per path would make
a time series per secret in every backend (the audit trail answers "which path").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from airflow_provider_mlsecrets.metrics._sink import failed, failures, ready, reset, wait

__all__ = ["append", "count", "enabled", "failures", "gauge", "lookup", "operation", "reset",
           "wait"]

# actions with a metric of their own besides mlsecrets.operation
_NAMED = {"secret.inject": "mlsecrets.inject", "secret.read": "mlsecrets.read"}
# a rotation ends with one of these operations, allowed (rotation.fail records an error
# outcome in an allowed transaction, so it is matched by action)
_ROTATION_ENDS = {"rotation.finish": "rotated", "rotation.fail": "failed"}


def enabled() -> bool:
    """Whether metrics go anywhere (for work done only to measure, such as a count)."""
    return ready() is not None


def operation(action: str, outcome: str, seconds: float,
              context: Mapping[str, object] | None = None) -> None:
    """One vault action as :meth:`Core.operation` ended it."""
    stats = ready()
    if stats is None:
        return
    try:
        tags = {"action": action, "outcome": outcome}
        took = timedelta(seconds=seconds)
        stats.incr("mlsecrets.operation", tags=tags)
        stats.timing("mlsecrets.operation.duration", took, tags=tags)
        name = _NAMED.get(action)
        if name is not None:
            own = {"outcome": outcome}
            dag_id = (context or {}).get("dag_id")
            if isinstance(dag_id, str) and dag_id:
                own["dag_id"] = dag_id
            stats.incr(name, tags=own)
            stats.timing(f"{name}.duration", took, tags=own)
        if outcome == "denied":
            stats.incr("mlsecrets.denied", tags={"action": action})
        elif outcome == "error" and action != "rotation.fail":
            stats.incr("mlsecrets.error", tags={"action": action})
        end = _ROTATION_ENDS.get(action)
        if end is not None and (outcome == "allowed" or end == "failed"):
            stats.incr("mlsecrets.rotation", tags={"outcome": end})
    except Exception as exc:
        failed(exc)


def lookup(kind: str, outcome: str, seconds: float) -> None:
    """One lookup by the Airflow secrets backend (``connection``, ``variable``, ``config``)
    and how it ended (``found``, ``not_found``, ``denied``, ``error``)."""
    stats = ready()
    if stats is None:
        return
    try:
        tags = {"kind": kind, "outcome": outcome}
        stats.incr("mlsecrets.lookup", tags=tags)
        stats.timing("mlsecrets.lookup.duration", timedelta(seconds=seconds), tags=tags)
    except Exception as exc:
        failed(exc)


def append(seconds: float) -> None:
    """One audit record appended (chained and sealed, in its transaction)."""
    stats = ready()
    if stats is None:
        return
    try:
        stats.incr("mlsecrets.audit.append")
        stats.timing("mlsecrets.audit.append.duration", timedelta(seconds=seconds))
    except Exception as exc:
        failed(exc)


def gauge(name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
    """A level: ``mlsecrets.audit.verification.lag``, ``mlsecrets.audit.mark.age``,
    ``mlsecrets.key.rewrap.remaining``."""
    stats = ready()
    if stats is None:
        return
    try:
        stats.gauge(name, value, tags=dict(tags) if tags else None)
    except Exception as exc:
        failed(exc)


def count(name: str, tags: Mapping[str, str] | None = None) -> None:
    """One event (``mlsecrets.audit.verification``)."""
    stats = ready()
    if stats is None:
        return
    try:
        stats.incr(name, tags=dict(tags) if tags else None)
    except Exception as exc:
        failed(exc)
