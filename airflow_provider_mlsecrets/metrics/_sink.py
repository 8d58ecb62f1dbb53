"""Which of Airflow's stats singletons this process emits through, made ready off the
audited path.

Airflow 3.3 has two: the core one (``airflow._shared.observability.metrics.stats``), which
the API server, scheduler, triggerer and DAG processor initialise from ``[metrics]``, and
the Task SDK's (``airflow.sdk.observability.stats``), which the task runner initialises. A
plain process (the ``mlsecrets`` CLI, ``airflow connections get``) initialises neither.
The vault emits through whichever one the process initialised, core first, so it shares
that process's StatsD socket or OpenTelemetry meter provider; where neither was, it
initialises the Task SDK's from the same ``[metrics]`` settings.

Metrics are off (every call returns at once) unless ``[metrics] statsd_on``, ``otel_on``
or ``statsd_datadog_enabled`` is set, and in a process that has not imported Airflow (the
vault never imports it, which takes seconds, only to emit). Building the backend can wait
on the network (a StatsD host name is resolved when its client is created), so it is built
on a daemon thread, which then stays to send. A vault operation sends nothing itself: its
timers are appended to a bounded queue (beyond 20,000 operations' worth between two sends
they are dropped and counted, never waited for) and its counters are additions to a count
in memory (:func:`add`); once a second the thread sends the queued timers and each count as
one ``incr(name, count=n)``, and at exit a process sends what is left (for up to a second).
Sending on the operation's own thread cost it about 25 µs a metric (Airflow's StatsD layer
and a loopback ``sendto``), 1.15 to 1.25 times a lookup's median; a thread per send measured slower
still (each one waited for the interpreter lock); one thread sending in batches costs a
lookup about 10 µs (docs/performance.md). A failure to build or emit is logged once at debug
(its type, never a value) and counted.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

Call = tuple[str, tuple[Any, ...], dict[str, Any]]  # a stats function's name and arguments

log = logging.getLogger(__name__)

_OFF, _UNDECIDED, _WARMING, _READY = "off", "undecided", "warming", "ready"

_state = _UNDECIDED
_stats: ModuleType | None = None
_thread: threading.Thread | None = None
_failures = 0
_generation = 0  # a reset or fork makes a warm-up still running from before stale
_pending: list[Sequence[Call]] = []
_MAX_PENDING = 20_000  # operations' worth of timers between two sends of the thread
_counts: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
_PERIOD = 1.0  # seconds between two sends of the counts
_again = False  # initialise the Task SDK's singleton again: [metrics] changed (reset)
_lock = threading.Lock()


def on() -> bool:
    """Whether metrics are on in this process (ready, or being made ready)."""
    if _state is _READY:
        return True
    if _state is _OFF:
        return False
    if _state is _UNDECIDED:
        _start()
    return _state is _READY or _state is _WARMING


def send(calls: Sequence[Call]) -> None:
    """Queue ``calls`` for the emitting thread (bounded: beyond it they are dropped and
    counted as failures, never waited for)."""
    with _lock:
        if _state is _READY or _state is _WARMING:
            if len(_pending) < _MAX_PENDING:
                _pending.append(calls)
                return
        else:
            return
    failed(OverflowError("metrics queue full"))


def add(name: str, tags: dict[str, str] | None = None) -> None:
    """Count one event under ``name`` and ``tags``; sent with the others once a second."""
    key = (name, tuple(sorted(tags.items())) if tags else ())
    with _lock:
        _counts[key] = _counts.get(key, 0) + 1


def send_counts() -> None:
    """Send the counts made since the last send (the emitting thread, and at exit)."""
    stats = _stats
    if _state is not _READY or stats is None:
        return
    with _lock:
        counts = dict(_counts)
        _counts.clear()
        queued = list(_pending)
        _pending.clear()
    for calls in queued:
        _perform(stats, calls)
    _perform(stats, [("incr", (name,), {"count": n, "tags": dict(tags) or None})
                     for (name, tags), n in counts.items()])


def _perform(stats: ModuleType, calls: Sequence[Call]) -> None:
    try:
        for name, args, kwargs in calls:
            getattr(stats, name)(*args, **kwargs)
    except Exception as exc:  # whatever a backend raises, the vault's path goes on
        failed(exc)


def failed(exc: BaseException) -> None:
    """Count a failure to emit; the first one is logged, at debug, by type only."""
    global _failures
    _failures += 1
    if _failures == 1:
        log.debug("mlsecrets: emitting a metric failed (%s); later failures are only counted",
                  type(exc).__name__)


def failures() -> int:
    return _failures


def wait(timeout: float) -> bool:
    """Decide and, if metrics are on, wait up to ``timeout`` seconds for the backend (tests,
    benchmarks, a short CLI command that must not lose its first metrics)."""
    on()
    deadline = time.monotonic() + timeout
    while _state is _WARMING and time.monotonic() < deadline:
        time.sleep(0.01)
    return _state is _READY


def flush(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until what was queued while the backend was being
    built has been sent, then send the counts (a short process at exit; tests)."""
    deadline = time.monotonic() + timeout
    while _state is _WARMING and time.monotonic() < deadline:
        time.sleep(0.01)
    send_counts()
    return _state is not _WARMING


def reset() -> None:
    """Read ``[metrics]`` again at the next emission (tests and benchmarks change it; the
    Task SDK's singleton, which importing ``airflow.sdk.serde`` initialises from the
    configuration of that moment, is initialised again)."""
    global _state, _stats, _thread, _generation, _again, _failures
    with _lock:
        _again, _failures = True, 0
        _state, _stats, _thread = _UNDECIDED, None, None
        _generation += 1
        _pending.clear()
        _counts.clear()



def _start() -> None:
    global _state, _thread
    if "airflow" not in sys.modules:
        return  # not an Airflow process (yet): importing Airflow takes seconds; ask again later
    with _lock:
        if _state is not _UNDECIDED:
            return
        module = _choose()
        if module is None:
            _state = _OFF
            return
        _state = _WARMING
        _thread = threading.Thread(target=_warm, args=(module, _generation), daemon=True,
                                   name="mlsecrets-metrics")
        _thread.start()


def _warm(module: ModuleType, generation: int) -> None:
    """Build the backend (``timer`` with a name builds it and loads Airflow's metric
    registry, and sends nothing until stopped), then publish the module."""
    global _state, _stats
    try:
        module.timer("mlsecrets.ready")
    except Exception as exc:  # a misconfigured backend: metrics off, the vault unaffected
        failed(exc)
        with _lock:
            if generation == _generation:
                _state = _OFF
                _pending.clear()
        return
    # Building it may have registered the backend's own exit handler (OpenTelemetry's
    # meter provider exports and shuts down at exit): move ours after it, so that it runs
    # first (handlers run last in, first out) and the last counts are in that export
    atexit.unregister(_flush_at_exit)
    atexit.register(_flush_at_exit)
    with _lock:
        if _state is not _WARMING or generation != _generation:
            return
        _stats, _state = module, _READY
        queued = list(_pending)
        _pending.clear()
    for calls in queued:
        _perform(module, calls)
    while generation == _generation:  # a reset or fork ends this thread's turn
        time.sleep(_PERIOD)
        if generation == _generation:
            send_counts()


def _choose() -> ModuleType | None:
    try:
        from airflow.sdk._shared.observability.metrics import stats as sdk_state
        from airflow.sdk.configuration import conf
        from airflow.sdk.observability import stats as sdk_stats
        from airflow.sdk.observability.metrics import stats_utils

        if not any(conf.getboolean("metrics", option, fallback=False)
                   for option in ("statsd_on", "otel_on", "statsd_datadog_enabled")):
            return None
        core = _core_stats()
        if core is not None and _initialised(core):
            return core
        global _again
        if _again or not _initialised(sdk_state):
            _again = False
            sdk_stats.initialize(factory=stats_utils.get_stats_factory(),
                                 export_legacy_names=conf.getboolean(
                                     "metrics", "legacy_names_on", fallback=False))
        return sdk_stats
    except Exception as exc:  # Airflow missing or unreadable configuration: off
        failed(exc)
        return None


def _core_stats() -> ModuleType | None:
    try:
        from airflow._shared.observability.metrics import stats
    except ImportError:  # a worker with the Task SDK only
        return None
    return stats


def _initialised(module: ModuleType) -> bool:
    # Airflow keeps the factory its process configured in a module global; no public reader
    factory: Any = getattr(module, "_factory", None)
    return factory is not None


def _after_fork() -> None:
    """Airflow drops its backend in a forked child; build it again there, off the path."""
    global _state, _thread, _lock, _generation
    _lock = threading.Lock()  # another thread may have held it at the fork
    _generation += 1
    if _state is _READY or _state is _WARMING:
        _state, _thread = _UNDECIDED, None
        _pending.clear()
    _counts.clear()  # the parent sends its own


os.register_at_fork(after_in_child=_after_fork)
def _flush_at_exit() -> None:
    """A short process (a CLI lookup) sends what it queued, waiting at most a second."""
    flush(1.0)


atexit.register(_flush_at_exit)
