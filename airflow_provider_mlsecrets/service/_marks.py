"""Moving the HSM's high-water marks on the vault's own, at a bounded cadence.

After an operation commits, if this process has not marked the chain it wrote to for
``MLSECRETS_AUDIT_MARK_INTERVAL`` seconds, the chain is checked from its mark to its head
(a software walk over the records since, plus the head's seal) under the head's lock, and
the mark moved there. A database that is behind its mark, or does not pass through it,
fails the operation closed: the vault does not move a mark over a rollback. At most one
interval of records per process is exposed to an undetected rollback; ``audit verify``,
``audit checkpoint`` and the rotation DAG move the marks too.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy import select

from airflow_provider_mlsecrets import metrics
from airflow_provider_mlsecrets.audit import log as audit_log
from airflow_provider_mlsecrets.audit import mark as hsm_mark
from airflow_provider_mlsecrets.audit import verify as verification
from airflow_provider_mlsecrets.audit.record import format_ts
from airflow_provider_mlsecrets.errors import AuditChainBroken
from airflow_provider_mlsecrets.store.models import AuditHead

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.service._core import Core


class Marks:
    def __init__(self, core: Core) -> None:
        self._core = core
        self._next: dict[int, float] = {}  # chain -> when this process marks it next
        self._lock = threading.Lock()

    def after_commit(self, chain: int) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(chain, 0.0):
                return
            self._next[chain] = now + self._core.settings.audit_mark_interval
        self.advance(chain)

    def advance(self, chain: int) -> None:
        """Check ``chain`` since its mark and move the mark to its head."""
        core = self._core
        with core.transaction() as session:
            c = session.connection()
            vault_id = core.vault_id(session)
            head = c.execute(select(AuditHead).where(AuditHead.chain == chain)
                             .with_for_update()).one_or_none()
            if head is None:
                return  # reported by verification; appends refuse it already
            previous = hsm_mark.read(core.keys, vault_id, chain)
            if previous is not None:
                _measure_age(chain, previous.at)
            if previous is not None and (previous.seq, previous.hash) == (head.seq, head.hash):
                return
            if previous is None:
                audit_log.check_head(c, core.keys, vault_id, chain, head.seq, head.hash)
            else:
                report = verification.since_mark(c, core.keys, vault_id, head, previous)
                if not report.ok:
                    raise AuditChainBroken(
                        "; ".join(report.problems) + " (found while moving the HSM's "
                        "high-water mark; the mark was left where it was)",
                        chain=chain, seq=(report.first_bad or (chain, None))[1])
            hsm_mark.write(core.keys, vault_id, chain, head.seq, head.hash,
                           format_ts(datetime.now(timezone.utc)), previous)


def _measure_age(chain: int, at: str) -> None:
    """``mlsecrets.audit.mark.age``: seconds since the chain's mark last moved, as the vault
    is about to move it (how long it stood)."""
    if metrics.enabled():
        try:
            moved = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:  # authenticated, written by the vault: never so; not the path's
            return
        metrics.gauge("mlsecrets.audit.mark.age",
                      (datetime.now(timezone.utc) - moved).total_seconds(), {"chain": str(chain)})
