"""Key-encryption-key rotation, online and resumable.

1. ``key.rotate``: KEK n+1 is generated in the HSM and becomes current in one transaction
   (new versions are sealed under it at once); the old one becomes ``retired`` and still
   unwraps.
2. ``key.rewrap``: data keys still under a retired KEK are unwrapped and wrapped again under
   the current one in batches, each batch one transaction with its audit record. No payload
   is decrypted: the payload's associated data does not name the KEK (crypto/envelope.py).
   A row is updated only if it still holds what was read, so reads and writes go on, and a
   crash loses at most the batch in flight: running ``key rotate`` again resumes here.
3. ``key.disable``: a retired KEK that no data key references is marked ``disabled``; the
   vault never unwraps under a disabled KEK again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, func, select, true, update
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets import metrics
from airflow_provider_mlsecrets.crypto.envelope import UNAUTHENTIC, Binding, Envelope, Sealed
from airflow_provider_mlsecrets.errors import ConfigurationError, IntegrityError, KeyMissing
from airflow_provider_mlsecrets.keys import KekId, kek_label
from airflow_provider_mlsecrets.keys.cache import uncached
from airflow_provider_mlsecrets.policy.roles import Capability
from airflow_provider_mlsecrets.service._core import Caller, Core, utcnow
from airflow_provider_mlsecrets.store.models import Kek, KeyState, Secret, SecretVersion

BATCH = 500
_VERSIONS, _SECRETS, _KEKS = SecretVersion.__table__, Secret.__table__, Kek.__table__
# what a re-wrap needs of a version under a retired KEK: never its ciphertext
_RETIRED_KEYS = select(
    _VERSIONS.c.id, _VERSIONS.c.version, _VERSIONS.c.kek_id, _VERSIONS.c.wrapped_key,
    _VERSIONS.c.nonce, _VERSIONS.c.format_version, _SECRETS.c.path,
    _VERSIONS.c.ciphertext.is_not(None).label("has_payload"),
).join(_SECRETS, _SECRETS.c.id == _VERSIONS.c.secret_id).join(
    _KEKS, _KEKS.c.label == _VERSIONS.c.kek_id,
).where(_VERSIONS.c.wrapped_key.is_not(None), _KEKS.c.state == KeyState.RETIRED.value
        ).order_by(_VERSIONS.c.id)
# compare-and-set: a row that changed since it was read is left alone
_PENDING = (select(func.count()).select_from(SecretVersion)
            .join(Kek, Kek.label == SecretVersion.kek_id)
            .where(SecretVersion.wrapped_key.is_not(None), Kek.state == KeyState.RETIRED.value))
_MOVE_KEY = update(cast(Table, _VERSIONS)).where(
    _VERSIONS.c.id == bindparam("row"), _VERSIONS.c.kek_id == bindparam("old_kek"),
    _VERSIONS.c.wrapped_key == bindparam("old_key"),
).values(kek_id=bindparam("new_kek"), wrapped_key=bindparam("new_key"))
Progress = Callable[[int], None]


@dataclass(frozen=True)
class RotationReport:
    current: str
    created: bool
    rewrapped: int
    disabled: list[str]
    failed: list[str]  # "path vN" of data keys that did not authenticate (left as they were)


class KeyService:
    def __init__(self, core: Core) -> None:
        self._core = core

    def pending(self, caller: Caller) -> int:
        """How many data keys a retired KEK still wraps (what a rotation has left to do)."""
        with self._core.operation(caller, "key.pending", Capability.LIST) as op:
            return int(op.session.execute(_PENDING).scalar_one())

    def rotate(self, caller: Caller, *, new_version: bool = True, disable: bool = True,
               progress: Progress | None = None) -> RotationReport:
        """Rotate (or, with ``new_version=False``, only finish an interrupted rotation)."""
        created = self.start(caller) if new_version else False
        return self.finish(caller, created=created, disable=disable, progress=progress)

    def start(self, caller: Caller) -> bool:
        """Step 1: a new current KEK."""
        return self._create_next(caller)

    def finish(self, caller: Caller, *, created: bool = False, disable: bool = True,
               progress: Progress | None = None) -> RotationReport:
        """Steps 2 and 3: re-wrap what the retired KEKs still wrap, then (unless ``disable``
        is false: sealed tokens still need the old key) disable the ones nothing uses."""
        rewrapped, failed = 0, []
        skip: set[int] = set()
        while True:
            done, bad = self._rewrap_batch(caller, skip)
            failed += bad
            if done == 0 and not bad:
                break
            rewrapped += done
            if progress is not None:
                progress(done + len(bad))
        disabled = self._disable_unused(caller) if disable else []
        with self._core.transaction() as session:
            current = current_kek(session).label
        return RotationReport(current=current, created=created, rewrapped=rewrapped,
                              disabled=disabled, failed=failed)

    # -- the three steps ---------------------------------------------------------------
    def _create_next(self, caller: Caller) -> bool:
        with self._core.operation(caller, "key.rotate", Capability.ROTATE) as op:
            old = current_kek(op.session, lock=True)
            version = old.version + 1
            label = kek_label(self._core.settings.key_prefix, version)
            try:
                self._core.keys.describe(label)  # left by a rotation that crashed here
            except KeyMissing:
                self._core.keys.create_kek(version)
            old.state = KeyState.RETIRED.value
            op.session.add(Kek(version=version, label=label, state=KeyState.CURRENT.value,
                               created_at=utcnow()))
            op.reason += f"; {label} is current, {old.label} retired"
            return True

    def _rewrap_batch(self, caller: Caller, skip: set[int]) -> tuple[int, list[str]]:
        """One batch, one transaction. Only data keys under a *retired* KEK are touched (a
        row naming a disabled or unknown key is never unwrapped); a data key that does not
        authenticate is left as it is, named in the audit record, and its KEK stays enabled.
        Payloads are neither read nor changed, and the rows are updated in one statement."""
        with self._core.operation(caller, "key.rewrap", Capability.ROTATE) as op:
            current = KekId(current_kek(op.session).label)
            vault_id = self._core.vault_id(op.session)
            rows = op.session.connection().execute(
                _RETIRED_KEYS.where(_VERSIONS.c.id.not_in(skip) if skip else true())
                .limit(BATCH)).all()
            # straight to the HSM: data keys being moved are not kept in the key cache
            envelope, done, bad = Envelope(uncached(self._core.keys),
                                            kek_prefix=self._core.settings.key_prefix), [], []
            for row in rows:
                try:
                    if row.nonce is None or not row.has_payload:
                        raise IntegrityError("incomplete version")
                    new = envelope.rewrap(
                        Sealed(kek_id=KekId(row.kek_id), wrapped_key=row.wrapped_key,
                               nonce=row.nonce, ciphertext=b"", format_version=row.format_version),
                        Binding(vault_id, row.path, row.version), current)
                except IntegrityError:
                    skip.add(row.id)
                    bad.append(f"{row.path} v{row.version}")
                    continue
                done.append({"row": row.id, "old_kek": row.kek_id, "old_key": row.wrapped_key,
                             "new_kek": new.kek_id, "new_key": new.wrapped_key})
            if done:
                op.session.connection().execute(_MOVE_KEY, done)
            if metrics.enabled():  # what is left after this batch (a count only to measure)
                metrics.gauge("mlsecrets.key.rewrap.remaining",
                              float(op.session.execute(_PENDING).scalar_one()))
            op.reason += f"; {len(done)} data keys re-wrapped under {current}"
            if bad:
                op.reason += "; did not authenticate, left as they were: " + ", ".join(bad)
            return len(done), bad

    def _disable_unused(self, caller: Caller) -> list[str]:
        with self._core.operation(caller, "key.disable", Capability.ROTATE) as op:
            used = set(op.session.scalars(select(SecretVersion.kek_id).where(
                SecretVersion.wrapped_key.is_not(None)).distinct()))
            disabled = []
            for kek in op.session.scalars(select(Kek).where(
                    Kek.state == KeyState.RETIRED.value)):
                if kek.label not in used:
                    kek.state = KeyState.DISABLED.value
                    disabled.append(kek.label)
            op.reason += "; disabled " + (", ".join(disabled) or "nothing")
            return disabled


def current_kek(session: Session, *, lock: bool = False, share: bool = False) -> Kek:
    """The KEK new versions are sealed under: ``lock`` for a rotation (exclusive), ``share``
    for a write that seals under it, so a rotation cannot retire and disable the key while
    the write that uses it is still uncommitted. Under PostgreSQL's READ COMMITTED, a write
    that waited on a rotation sees the old row no longer current and the new one not yet in
    its snapshot, so it asks again."""
    query = select(Kek).where(Kek.state == KeyState.CURRENT.value)
    if lock:
        query = query.with_for_update()
    elif share:
        query = query.with_for_update(read=True)
    for _ in range(3):
        kek = session.execute(query).scalar_one_or_none()
        if kek is not None:
            return kek
    raise ConfigurationError("no current key-encryption key; run 'mlsecrets init'")


USABLE_KEK_STATES = frozenset({KeyState.CURRENT.value, KeyState.RETIRED.value})


def check_usable(session: Session, label: str) -> None:
    """Refuse a KEK the store does not list as current or retired (a disabled key, or a
    label written into a row or token from elsewhere)."""
    state = session.execute(select(Kek.state).where(Kek.label == label)).scalar_one_or_none()
    if state not in USABLE_KEK_STATES:
        raise IntegrityError(UNAUTHENTIC)
