"""The rotation DAG: find what is due, rotate each secret as its own mapped task (with
retries that resume where a failure stopped), rotate the key-encryption key on its own
cadence, apply retention, and end by verifying the audit chain and publishing a checkpoint of
it outside the database (``MLSECRETS_AUDIT_CHECKPOINT_URL``).

Every finished rotation emits an asset event for ``mlsecrets://PATH`` (through the asset
alias :data:`ROTATED`), so a DAG scheduled on :func:`secret_asset` runs, or refreshes its
clients, once the credential it depends on has changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import DAG, Asset, AssetAlias, dag, task

from airflow_provider_mlsecrets.audit.publish import CheckpointStoreError, in_folder
from airflow_provider_mlsecrets.durations import parse_duration
from airflow_provider_mlsecrets.errors import IntegrityError, MLSecretsError, RotationBusy

ROTATED = "mlsecrets-rotated"
KINDS = ("rotated", "invalidated", "cancelled", "failed", "busy", "skipped")
SCHEME = "mlsecrets"
log = logging.getLogger(__name__)


def secret_asset(path: str) -> Asset:
    """The asset that changes whenever the secret at ``path`` is rotated."""
    return Asset(f"{SCHEME}://{path}")


def task_vault(conn_id: str, dag: str = "the rotation DAG") -> tuple[Any, Any]:
    """The vault a maintenance task reaches (the service at ``MLSECRETS_URL``, or an
    embedded one) and its principal. A missing setting fails the task for good, saying what
    to configure: retrying cannot fix it."""
    from airflow_provider_mlsecrets.errors import ConfigurationError
    from airflow_provider_mlsecrets.hooks.vault import MLSecretsHook

    hook = MLSecretsHook(mlsecrets_conn_id=conn_id)
    try:
        return hook.vault, hook.caller()
    except ConfigurationError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{dag} is not configured: {exc}") from None


def create_rotation_dag(
    dag_id: str = "mlsecrets_rotation",
    *,
    schedule: str | None = "@hourly",
    start_date: datetime | None = None,
    kek_every: str | None = "90d",
    keep_retired_keys: bool = False,
    mlsecrets_conn_id: str = "mlsecrets_rotation",
    retries: int = 2,
    retry_delay: timedelta = timedelta(minutes=1),
    tags: Sequence[str] = ("mlsecrets",),
    **dag_kwargs: Any,
) -> DAG:
    """Build the rotation DAG.

    :param kek_every: rotate the key-encryption key when the current one is older than this
        duration (``None``: never from this DAG).
    :param keep_retired_keys: leave retired KEKs enabled after a key rotation (for sealed
        values that still need re-sealing).
    :param mlsecrets_conn_id: the connection whose ``token_file`` extra names the rotating
        principal's token (a ``rotator`` principal with ``rotate`` and ``list`` on the
        paths it rotates, ``inject`` on the credentials its rotators use, and ``rotate``,
        ``list`` and ``audit`` on ``**`` for the key and the audit check); if it does not
        exist, ``MLSECRETS_TOKEN_FILE`` does. Where the vault is comes from the worker's
        ``MLSECRETS_*`` environment: in production ``MLSECRETS_URL`` (the API server's
        ``/mlsecrets`` or ``mlsecrets serve``), so the worker holds a token and no key;
        ``MLSECRETS_AUDIT_CHECKPOINT_URL`` names the folder each run publishes a checkpoint
        to.
    """
    kek_age = parse_duration(kek_every) if kek_every else None

    @dag(dag_id=dag_id, schedule=schedule, catchup=False, max_active_runs=1,
         start_date=start_date or datetime(2026, 1, 1, tzinfo=timezone.utc), tags=list(tags),
         default_args={"retries": retries, "retry_delay": retry_delay},
         doc_md=__doc__, **dag_kwargs)
    def rotation() -> None:
        @task
        def find_due() -> list[str]:
            vault, caller = task_vault(mlsecrets_conn_id)
            due: list[str] = vault.rotation.due(caller)
            log.info("%d secret(s) due: %s", len(due), ", ".join(due) or "none")
            return due

        @task(outlets=[AssetAlias(ROTATED)])
        def rotate(path: str, *, outlet_events: Any = None) -> dict[str, Any]:
            vault, caller = task_vault(mlsecrets_conn_id)
            try:
                result = vault.rotation.rotate(caller, path, only_if_due=True)
            except RotationBusy as exc:  # another run holds it: not this run's failure
                log.warning("%s", exc)
                return {"path": path, "result": "busy", "version": None}
            if result.result == "rotated" and outlet_events is not None:
                outlet_events[AssetAlias(ROTATED)].add(
                    secret_asset(path), extra={"path": path, "version": result.version})
            log.info("%s: %s (steps %s), current version %s", path, result.result,
                     ",".join(result.steps) or "-", result.version)
            return {"path": path, "result": result.result, "version": result.version}

        @task
        def rotate_key() -> dict[str, Any]:
            vault, caller = task_vault(mlsecrets_conn_id)
            current = next(k for k in vault.key_list(caller) if k.state == "current")
            created = datetime.fromisoformat(current.created_at.replace("Z", "+00:00"))
            if kek_age is None or datetime.now(timezone.utc) - created < kek_age:
                log.info("key %s is not due (created %s)", current.label, current.created_at)
                return {"rotated": False, "current": current.label}
            report = vault.keys.rotate(caller, disable=not keep_retired_keys)
            log.info("key rotated: %s current, %d data keys re-wrapped, disabled %s",
                     report.current, report.rewrapped, ", ".join(report.disabled) or "nothing")
            return {"rotated": True, "current": report.current, "rewrapped": report.rewrapped,
                    "failed": report.failed}

        @task(trigger_rule="all_done")
        def verify_and_summarise(due: list[str], results: Iterable[Any],
                                 key: Mapping[str, Any] | None) -> dict[str, Any]:
            vault, caller = task_vault(mlsecrets_conn_id)
            destroyed = vault.rotation.retain(caller)
            summary = summarise(due or [], results or [],
                                [s.path for s in vault.rotation.status(caller)])
            summary["destroyed"] = destroyed
            summary["key"] = dict(key) if key else {"rotated": None}
            for line in format_summary(summary):
                log.info("%s", line)
            try:
                report = vault.audit.verify(caller)
                problems = report.problems
            except IntegrityError as exc:
                problems = [str(exc)]
            if problems:  # no retry: tampering does not heal
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException("AUDIT CHAIN VERIFICATION FAILED: "
                                           + "; ".join(problems))
            summary["audit"] = {"ok": True, "records": report.records}
            log.info("audit chain verified: %d records", report.records)
            failures, retry = [], False
            try:
                summary["checkpoint"] = publish_checkpoint(vault, caller)
            except IntegrityError as exc:  # the trail changed since it was verified
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"AUDIT CHAIN VERIFICATION FAILED: {exc}") from None
            except MLSecretsError as exc:  # the rotations stand; this task shows the failure
                failures.append(f"AUDIT CHECKPOINT NOT PUBLISHED: {exc}")
                retry = isinstance(exc, CheckpointStoreError)  # a store may answer next time
            if summary["failed"]:  # the run fails too, not only the mapped task
                failures.append(f"{len(summary['failed'])} rotation(s) failed: "
                                f"{', '.join(summary['failed'])}; their current versions "
                                "are unchanged, the next run resumes them")
            if failures:
                from airflow.sdk.exceptions import AirflowException, AirflowFailException

                raise (AirflowException if retry else AirflowFailException)("; ".join(failures))
            return summary

        due = find_due()
        results = rotate.expand(path=due)
        key = rotate_key()
        verify_and_summarise(due, results, key)  # type: ignore[arg-type]  # XComArgs

    built: DAG = rotation()
    return built


def publish_checkpoint(vault: Any, caller: Any) -> str | None:
    """Take a checkpoint (the vault verifies the trail first) and write it as a new
    ``checkpoint-<UTC time>.json`` in the folder ``MLSECRETS_AUDIT_CHECKPOINT_URL`` names;
    returns where, or ``None`` when the setting is unset. A bad URL fails before the
    checkpoint is taken."""
    folder = vault.settings.audit_checkpoint_url
    if not folder:
        log.warning("audit checkpoints are not being published: set "
                    "MLSECRETS_AUDIT_CHECKPOINT_URL to a folder URL (file:///srv/checkpoints/, "
                    "s3://bucket/prefix/) to keep one outside the database every run")
        return None
    out = in_folder(folder)
    out.write(vault.audit.checkpoint(caller))
    log.info("audit checkpoint published to %s", out.display)
    return out.display


def summarise(due: Sequence[str], results: Iterable[Any],
              with_policy: Sequence[str]) -> dict[str, Any]:
    """Rotated, invalidated, cancelled (an interrupted cancel finished), busy (another run
    held it), failed (due, but its mapped task left no result) and skipped (under a policy
    but not due, or no longer due when its task ran)."""
    by_path = {r["path"]: r["result"] for r in results if isinstance(r, Mapping)}
    out: dict[str, list[str]] = {k: [] for k in KINDS}
    for path in due:
        result = by_path.get(path, "failed")
        out["skipped" if result not in out else result].append(path)
    out["skipped"] += [p for p in with_policy if p not in set(due)]
    return dict(out)


def format_summary(summary: Mapping[str, Any]) -> list[str]:
    lines = ["rotation summary:"]
    for kind in KINDS:
        paths = summary.get(kind, [])
        lines.append(f"  {kind:<12}{len(paths):>4}  {', '.join(paths)}")
    key = summary.get("key") or {}
    lines.append(f"  key rotated {key.get('rotated')}  current {key.get('current', '-')}")
    if summary.get("destroyed"):
        lines.append(f"  destroyed after retention: {', '.join(summary['destroyed'])}")
    return lines
