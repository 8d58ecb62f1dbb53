"""The review operations behind ``vault.insight.review``, ``.verify_review`` and
``.note_revocations``: each one an audited vault operation (``review.create``,
``review.verify``, ``review.revoke``)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from airflow_provider_mlsecrets.audit.anchor import _authentic as authentic_record
from airflow_provider_mlsecrets.audit.record import Outcome
from airflow_provider_mlsecrets.durations import parse_duration
from airflow_provider_mlsecrets.errors import IntegrityError, InvalidInput
from airflow_provider_mlsecrets.policy.roles import Capability
from airflow_provider_mlsecrets.review import collect, flagged_unused, parse, render, seal
from airflow_provider_mlsecrets.review.seal import Signature
from airflow_provider_mlsecrets.service._core import Caller, Core, utcnow
from airflow_provider_mlsecrets.store.models import AuditAnchor, AuditRecord

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.service.insight import InsightService

CREATE = "review.create"


@dataclass(frozen=True)
class MadeReview:
    review: dict[str, Any]  # the data (review/collect.py)
    signature: Signature
    files: dict[str, bytes]  # "json" | "html" | "csv" -> the signed file


@dataclass(frozen=True)
class ReviewCheck:
    """What ``review verify`` proved of a file."""

    review_id: str
    kind: str
    created_by: str
    created_at: str
    window: str
    since: str
    until: str
    chain: int | None
    seq: int | None
    recorded_at: str | None  # its audit record's time (None: pruned since; see note)
    note: str
    unused_grants: list[dict[str, Any]]  # what it flags, read from the verified file


def make(insight: InsightService, core: Core, caller: Caller, window: str) -> MadeReview:
    """An access review of the last ``window`` (a duration: 90d), rendered in every format,
    signed by the HSM and recorded as ``review.create`` (whose request id is the review's
    id), all in one transaction; the signature then names where the record landed."""
    span = parse_duration(window)
    now = utcnow()
    try:
        since = now - span
    except OverflowError:
        raise InvalidInput(f"the window {window!r} reaches before the calendar") from None
    with core.operation(caller, CREATE, Capability.AUDIT) as op:
        vault_id = core.vault_id(op.session)
        data = collect.collect(insight, op.session, review_id=op.request_id, vault_id=vault_id,
                               created_by=op.actor.name, created_at=now, window=window,
                               since=since)
        bodies = {kind: render.render(kind, data) for kind in seal.FORMATS}
        digests = {kind: seal.digest(body) for kind, body in bodies.items()}
        tag = seal.mac(core.keys, vault_id, op.request_id, data["created_at"], op.actor.name,
                       window, data["since"], data["until"], digests)
        op.reason += (f"; review {op.request_id} of {window} from {data['since']} to "
                      f"{data['until']}; {len(data['unused_grants'])} unused grants; sha256 "
                      + " ".join(f"{k}={v}" for k, v in digests.items()))
        review_id = op.request_id
    with core.transaction() as session:
        record = _record(session, review_id)
    signature = Signature(
        format=seal.REVIEW_TAG, vault_id=vault_id, review_id=review_id,
        created_at=data["created_at"], created_by=data["created_by"], window=window,
        since=data["since"], until=data["until"], sha256=digests, mac=tag.hex(),
        chain=None if record is None else record.chain,
        seq=None if record is None else record.seq)
    return MadeReview(review=data, signature=signature, files={
        kind: seal.assemble(kind, bodies[kind], data, signature) for kind in seal.FORMATS})


def verify(core: Core, caller: Caller, content: bytes) -> ReviewCheck:
    """Prove a review file unaltered and this vault's: its body has the digest its signature
    names, the signature's MAC is the HSM's, and its ``review.create`` record is in the
    trail, authentic (its hash recomputes from its predecessor and its seal is the HSM's),
    naming the same maker and digests. Anything else raises :class:`IntegrityError` saying
    what; either way the check is recorded (``review.verify``)."""
    with core.operation(caller, "review.verify", Capability.AUDIT) as op:
        parsed = parse(content)
        sig = parsed.signature
        where = f"review {sig.review_id[:36]}"
        op.reason += f"; {where} ({parsed.kind})"
        vault_id = core.vault_id(op.session)
        if sig.vault_id != vault_id:
            raise IntegrityError(f"{where} was made by another vault ({sig.vault_id[:36]})")
        if not hmac.compare_digest(seal.digest(parsed.body),
                                   str(sig.sha256.get(parsed.kind, ""))):
            raise IntegrityError(f"{where}: the {parsed.kind.upper()} file was changed after "
                                 "it was made (its content does not match its signature)")
        try:
            given = bytes.fromhex(sig.mac)
        except (ValueError, TypeError):
            given = b""
        if not hmac.compare_digest(seal.mac_of(core.keys, sig), given):
            raise IntegrityError(f"{where}: its signature is not this vault's HSM's (forged, "
                                 "altered, or taken from another review)")
        recorded_at, note = _check_record(core, op.session, vault_id, sig, where)
        unused = flagged_unused(parsed)
        op.reason += "; intact" + (f" ({note})" if note else "")
    return ReviewCheck(review_id=sig.review_id, kind=parsed.kind, created_by=sig.created_by,
                       created_at=sig.created_at, window=sig.window, since=sig.since,
                       until=sig.until, chain=sig.chain, seq=sig.seq, recorded_at=recorded_at,
                       note=note, unused_grants=unused)


def _check_record(core: Core, session: Session, vault_id: str, sig: Signature, where: str
                  ) -> tuple[str | None, str]:
    record = _record(session, sig.review_id)
    if record is None:
        pruned = None if sig.chain is None or sig.seq is None else session.execute(
            select(AuditAnchor.pruned_at).where(AuditAnchor.chain == sig.chain,
                                                AuditAnchor.seq >= sig.seq)).first()
        if pruned is not None:
            return None, (f"its review.create record was pruned from the trail at {pruned[0]}; "
                          "the HSM's MAC alone proves the file")
        raise IntegrityError(f"{where}: its review.create record is not in the audit trail "
                             "(removed, or never written)")
    if (record.chain, record.seq) != (sig.chain, sig.seq) \
            or record.outcome != Outcome.ALLOWED.value or record.principal != sig.created_by \
            or not all(f"{k}={v}" in record.reason for k, v in sig.sha256.items()):
        raise IntegrityError(f"{where}: its audit record does not say what the file says")
    if not authentic_record(session.connection(), core.keys, vault_id, record):
        raise IntegrityError(f"{where}: its audit record was altered outside the vault (its "
                             "hash or seal does not hold); run 'mlsecrets audit verify'")
    return record.ts, ""


def note_revocations(core: Core, caller: Caller, review_id: str, revoked: list[str],
                     skipped: list[str]) -> None:
    """Record what ``revoke --from-review`` did (``review.revoke``), after each grant was
    revoked on its own (``grant.revoke`` records carrying the review's id)."""
    with core.operation(caller, "review.revoke", Capability.GRANT) as op:
        op.reason += (f"; from review {review_id}: revoked {len(revoked)} unused grant(s): "
                      f"{', '.join(revoked) or 'none'}"
                      + (f"; left {len(skipped)}: {'; '.join(skipped)}" if skipped else ""))


def _record(session: Session, review_id: str) -> Any:
    """The ``review.create`` record of ``review_id`` (index: action, path, ts)."""
    return session.scalars(select(AuditRecord).where(
        AuditRecord.action == CREATE, AuditRecord.path == "",
        AuditRecord.request_id == review_id)).first()
