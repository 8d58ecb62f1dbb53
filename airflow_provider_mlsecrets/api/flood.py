"""Failed authentications beyond a global ceiling: refused as always, but written to the
trail as one summary record per window instead of one record each.

Every ``denied`` record costs a database write and an HSM MAC (its seal). The per-address
budget (:mod:`.hardening`) stops one address; many addresses (a botnet, a /64 of IPv6, a
whole 127/8 on the host) could still fill the trail and keep the HSM busy. So failures are
written one by one up to ``--max-failed-auth`` per second; past it, a request whose
credential is not known good is checked first without a record
(:meth:`Core.authentication_failure`), and
if it fails it is answered 401 and counted. At the end of the window (and at shutdown) the
count is written as one ``auth.failures`` record: how many, from how many addresses (the
first :data:`MAX_ADDRESSES` named), first and last time. No failure goes unrecorded: each
has its own record or is counted in a summary."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from airflow_provider_mlsecrets.audit.record import Outcome
from airflow_provider_mlsecrets.errors import MLSecretsError
from airflow_provider_mlsecrets.service._core import NOBODY, Core, utcnow

log = logging.getLogger(__name__)
ACTION = "auth.failures"
MAX_ADDRESSES = 32  # addresses named in one summary; the rest are only counted


@dataclass
class Summary:
    """The failures of one window that have no record of their own."""

    failures: int = 0
    first: datetime | None = None
    last: datetime | None = None
    addresses: dict[str, None] = field(default_factory=dict)  # the first MAX_ADDRESSES
    distinct: set[str] = field(default_factory=set)  # bounded too: see add()

    def add(self, address: str, when: datetime) -> None:
        self.failures += 1
        self.first = self.first or when
        self.last = when
        if len(self.addresses) < MAX_ADDRESSES:
            self.addresses[address] = None
        if len(self.distinct) < 100_000:
            self.distinct.add(address)

    def merge(self, other: Summary) -> None:
        """Put a summary that could not be written back, to try again with this one."""
        self.failures += other.failures
        self.first = min(d for d in (self.first, other.first) if d is not None)
        self.last = max(d for d in (self.last, other.last) if d is not None)
        for address in other.addresses:
            if len(self.addresses) < MAX_ADDRESSES:
                self.addresses[address] = None
        self.distinct |= other.distinct


class FloodGuard:
    """The global budget of failed authentications (``ceiling`` per second, a second's
    worth at once) and the summary of those past it, written by ``write`` at the end of
    each ``window`` seconds from a timer thread started only when there is something to
    write (so building the app starts nothing)."""

    def __init__(self, ceiling: float, window: float,
                 write: Callable[[Summary, float], None]) -> None:
        self.ceiling, self.window, self._write = ceiling, window, write
        self._burst = float(max(int(ceiling), 1))
        self._tokens, self._stamp = self._burst, time.monotonic()
        self._lock = threading.Lock()
        self._pending = Summary()
        self._timer: threading.Timer | None = None

    def take(self) -> bool:
        """Take one failure from the budget: ``True`` if a failure may be recorded on its
        own, ``False`` if the budget is spent."""
        now = time.monotonic()
        with self._lock:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self.ceiling)
            self._stamp = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True

    def give_back(self) -> None:
        """A request that took from the budget did not fail."""
        with self._lock:
            self._tokens = min(self._burst, self._tokens + 1)

    def absorb(self, address: str) -> None:
        """One failure past the ceiling: count it in this window's summary."""
        with self._lock:
            self._pending.add(address, utcnow())
            if self._timer is None:
                self._timer = threading.Timer(self.window, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Write the pending summary now (the timer, shutdown). If it cannot be written it
        is kept for the next window, and the log says how many failures wait."""
        with self._lock:
            pending, self._pending = self._pending, Summary()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if not pending.failures:
            return
        try:
            self._write(pending, self.ceiling)
        except MLSecretsError as exc:
            log.error("mlsecrets: the summary of %d failed authentications could not be "
                      "written (%s); trying again in %g s", pending.failures,
                      type(exc).__name__, self.window)
            with self._lock:
                pending.merge(self._pending)
                self._pending = pending
                if self._timer is None:
                    self._timer = threading.Timer(self.window, self.flush)
                    self._timer.daemon = True
                    self._timer.start()


def write_summary(core: Core, summary: Summary, ceiling: float) -> None:
    """One ``auth.failures`` record (outcome ``denied``, principal ``<unauthenticated>``)
    for the failures of a window, written through the vault's own discipline."""
    if summary.first is None or summary.last is None:
        return  # nothing was counted: nothing to write
    context: dict[str, str | int | None] = {
        "component": "http", "failures": summary.failures,
        "addresses": ",".join(summary.addresses), "distinct_addresses": len(summary.distinct),
        "first": summary.first.isoformat(), "last": summary.last.isoformat()}
    core.record(ACTION, NOBODY, Outcome.DENIED,
                f"{summary.failures} failed authentications past the ceiling of {ceiling:g} "
                "per second, refused and counted here instead of one record each", context)
