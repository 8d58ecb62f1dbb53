"""The vault's metrics, through Airflow's own (StatsD or OpenTelemetry, as ``[metrics]``
configures it); every name is in docs/metrics.md.

Each function returns at once when metrics are off; otherwise it sends its timers and adds
to its counts, which the emitting thread sends once a second (see :mod:`._sink`); none
waits for a backend or raises: the
audited path must not wait on, or fail because of, a metrics backend. Tags carry the
action, the outcome, the kind of lookup and (for injections and reads) the DAG, never a
path: a path is not a value, but there are as many as there are secrets, and a tag per
path would make a time series per secret in every backend (the audit trail answers
"which path").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from airflow_provider_mlsecrets.metrics._sink import (
    Call,
    add,
    failures,
    flush,
    on,
    reset,
    send,
    wait,
)

__all__ = ["append", "count", "enabled", "failures", "flush", "gauge", "lookup", "operation",
           "reset", "wait"]

# actions with a metric of their own besides mlsecrets.operation
_NAMED = {"secret.inject": "mlsecrets.inject", "secret.read": "mlsecrets.read"}
# a rotation ends with one of these operations (rotation.fail writes an error outcome in an
# allowed transaction; a failed rotation.finish is followed by a rotation.fail)
_ROTATION_ENDS = {"rotation.finish": "rotated", "rotation.fail": "failed"}


def enabled() -> bool:
    """Whether metrics are on (for work done only to measure, such as a count)."""
    return on()


def operation(action: str, outcome: str, seconds: float,
              context: Mapping[str, object] | None = None) -> None:
    """One vault action as :meth:`Core.operation` ended it."""
    if not on():
        return
    tags = {"action": action, "outcome": outcome}
    took = timedelta(seconds=seconds)
    add("mlsecrets.operation", tags)
    name = _NAMED.get(action)
    if name is None:
        calls: list[Call] = [("timing", ("mlsecrets.operation.duration", took),
                              {"tags": tags})]
    else:  # its own timer, with the DAG, stands for the operation's (one packet, not two)
        own = {"outcome": outcome}
        dag_id = (context or {}).get("dag_id")
        if isinstance(dag_id, str) and dag_id:
            own["dag_id"] = dag_id
        add(name, own)
        calls = [("timing", (f"{name}.duration", took), {"tags": own})]
    if outcome == "denied":
        add("mlsecrets.denied", {"action": action})
    elif outcome == "error" and action != "rotation.fail":
        add("mlsecrets.error", {"action": action})
    end = _ROTATION_ENDS.get(action)
    if end is not None and (outcome == "allowed" or end == "failed"):
        add("mlsecrets.rotation", {"outcome": end})
    send(calls)


def lookup(kind: str, outcome: str, seconds: float) -> None:
    """One lookup by the Airflow secrets backend (``connection``, ``variable``, ``config``)
    and how it ended (``found``, ``not_found``, ``denied``, ``error``)."""
    if not on():
        return
    tags = {"kind": kind, "outcome": outcome}
    add("mlsecrets.lookup", tags)
    send([("timing", ("mlsecrets.lookup.duration", timedelta(seconds=seconds)), {"tags": tags})])


def append(seconds: float) -> None:
    """One audit record appended (chained and sealed, in its transaction)."""
    if not on():
        return
    add("mlsecrets.audit.append")
    send([("timing", ("mlsecrets.audit.append.duration", timedelta(seconds=seconds)), {})])


def gauge(name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
    """A level: ``mlsecrets.audit.verification.lag``, ``mlsecrets.audit.mark.age``,
    ``mlsecrets.key.rewrap.remaining``."""
    if on():
        send([("gauge", (name, value), {"tags": dict(tags) if tags else None})])


def count(name: str, tags: Mapping[str, str] | None = None) -> None:
    """One event (``mlsecrets.audit.verification``)."""
    if on():
        add(name, dict(tags) if tags else None)
