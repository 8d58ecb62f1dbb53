"""The background evaluator of the process that holds the vault (the API server's plugin,
``mlsecrets serve``): a daemon thread woken when this process commits an audit record
(``Core.written``, an Event the operation sets and never waits on) and at least every
``MLSECRETS_ALERT_INTERVAL`` seconds for what other processes wrote. Passes are at least
``min_gap`` apart, so a busy vault costs one short pass a second, not one per lookup; the
time-based rules run at most every ``conditions_every`` seconds. A failing pass is logged
(its exception's type) and tried again at the next wake-up; it never reaches a request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.service import Vault

log = logging.getLogger(__name__)


class AlertRunner:
    def __init__(self, vault: Callable[[], Vault], *, min_gap: float = 1.0,
                 conditions_every: float = 60.0) -> None:
        self._vault = vault
        self._min_gap = min_gap
        self._conditions_every = conditions_every
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.passes = 0  # how many passes ran (for tests and the benchmark)

    def start(self) -> None:
        """Start the thread once (idempotent); it reads its interval from the settings."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlsecrets-alerts",
                                                daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        vault = None
        while vault is None and not self._stop.is_set():
            try:
                vault = self._vault()
                interval = vault.settings.alert_interval
            except Exception as exc:  # settings or vault not ready: try again later
                log.warning("mlsecrets alerts: the vault is not usable yet (%s)",
                            type(exc).__name__)
                vault = None
                self._stop.wait(30.0)
        if vault is None or interval <= 0:
            return
        written, next_conditions = vault.core.written, 0.0
        written.set()  # a first pass at once
        while not self._stop.is_set():
            written.wait(interval)
            written.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            conditions = now >= next_conditions
            if conditions:
                next_conditions = now + self._conditions_every
            try:
                vault.alerts.run_pass(conditions=conditions)
            except Exception as exc:  # a pass that fails never takes the server down
                log.warning("mlsecrets alerts: an evaluation pass failed (%s); it is tried "
                            "again, and 'mlsecrets alerts run' shows why", type(exc).__name__)
            self.passes += 1
            self._stop.wait(self._min_gap)
