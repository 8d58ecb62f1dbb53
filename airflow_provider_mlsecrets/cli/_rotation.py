"""``mlsecrets rotation …`` (policies and status) and ``mlsecrets rotate`` (run them)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets.durations import parse_moment
from airflow_provider_mlsecrets.errors import (
    InvalidInput,
    MLSecretsError,
    RotationBusy,
    RotationFailed,
)
from airflow_provider_mlsecrets.rotation.policy import (
    DEFAULT_GRACE,
    DEFAULT_RETENTION,
    RotationPolicy,
    parse_config,
)
from airflow_provider_mlsecrets.rotation.registry import available

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context
    from airflow_provider_mlsecrets.service.rotation import RotationResult

MAX_CONFIG_FILE = 64 * 1024


def add_policy_arguments(parser: argparse.ArgumentParser, *, flag: str) -> None:
    """The policy options, shared by ``rotation set`` and ``secret put``."""
    parser.add_argument(flag, dest="schedule", metavar="SCHEDULE",
                        help="a duration (90s, 15m, 12h, 30d, 2w) or a cron expression in "
                             "quotes ('0 3 * * 1', UTC)")
    parser.add_argument("--rotator", metavar="NAME",
                        help="the rotator that makes each new value ('mlsecrets rotation "
                             "rotators' lists them)")
    parser.add_argument("--rotator-config", type=Path, metavar="FILE",
                        help="the rotator's settings, a JSON object (no secrets in it: name "
                             "other vault paths instead)")
    parser.add_argument("--grace", default=DEFAULT_GRACE, metavar="DURATION",
                        help=f"how long the previous value keeps working (default "
                             f"{DEFAULT_GRACE})")
    parser.add_argument("--retention", default=DEFAULT_RETENTION, metavar="DURATION",
                        help="how long retired versions are kept before they are destroyed "
                             f"(default {DEFAULT_RETENTION})")
    parser.add_argument("--next-due", metavar="WHEN",
                        help="when the first rotation is due: 'now', a duration from now or "
                             "an ISO 8601 time (default: one interval from now)")


def policy_from_args(args: argparse.Namespace, ctx: Context) -> RotationPolicy | None:
    """The policy the options describe, validated (rotator included), or ``None``."""
    if args.schedule is None:
        if args.rotator or args.rotator_config:
            raise InvalidInput("--rotator and --rotator-config need a schedule "
                               "(--rotate-every / --every)")
        return None
    if not args.rotator:
        raise InvalidInput("a rotation schedule needs --rotator NAME ('mlsecrets rotation "
                           "rotators' lists them)")
    config: dict[str, Any] = {}
    if args.rotator_config is not None:
        try:
            with open(args.rotator_config, "rb") as handle:
                text = handle.read(MAX_CONFIG_FILE + 1)
        except OSError as exc:
            raise InvalidInput(f"cannot read --rotator-config {args.rotator_config}: "
                               f"{exc.strerror}") from None
        if len(text) > MAX_CONFIG_FILE:
            raise InvalidInput(f"--rotator-config is over {MAX_CONFIG_FILE} bytes")
        config = parse_config(text.decode("utf-8", "replace"), str(args.rotator_config))
    policy = RotationPolicy(schedule=args.schedule, rotator=args.rotator, config=config,
                            grace=args.grace, retention=args.retention)
    policy.load_rotator()
    if policy.is_short:
        ctx.output.warn(f"warning: {args.path} will rotate more often than hourly "
                        f"({policy.schedule})")
    return policy


def next_due_from_args(args: argparse.Namespace) -> datetime | None:
    if args.next_due is None:
        return None
    if args.next_due.strip().lower() == "now":
        return datetime.now(timezone.utc)
    return parse_moment(args.next_due, future=True)


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("rotation", parents=[common],
                                help="rotation policies and their status")
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    set_ = sub.add_parser("set", parents=[common], help="rotate PATH on a schedule")
    set_.add_argument("path")
    add_policy_arguments(set_, flag="--every")
    set_.set_defaults(handler=_set)
    show = sub.add_parser("show", parents=[common], help="one secret's policy and state")
    show.add_argument("path")
    show.set_defaults(handler=_show)
    sub.add_parser("status", parents=[common],
                   help="every rotation: next due, last result, failures"
                   ).set_defaults(handler=_status)
    clear = sub.add_parser("clear", parents=[common], help="stop rotating PATH")
    clear.add_argument("path")
    clear.set_defaults(handler=_clear)
    cancel = sub.add_parser("cancel", parents=[common],
                            help="abandon a half-done rotation (the service gets the current "
                                 "value back; the pending version is destroyed)")
    cancel.add_argument("path")
    cancel.set_defaults(handler=_cancel)
    sub.add_parser("rotators", parents=[common], help="the installed rotators"
                   ).set_defaults(handler=_rotators)

    rotate = commands.add_parser("rotate", parents=[common],
                                 help="rotate PATH now, or every secret that is due")
    target = rotate.add_mutually_exclusive_group(required=True)
    target.add_argument("path", nargs="?")
    target.add_argument("--due", action="store_true",
                        help="everything due: rotations, resumptions, invalidations after "
                             "the grace period, and retention")
    rotate.add_argument("--no-asset-event", dest="asset_event", action="store_false",
                        help="do not emit the Airflow asset event the rotation DAG would "
                             "(mlsecrets://PATH) for what this rotates")
    rotate.set_defaults(handler=_rotate)


def _set(args: argparse.Namespace, ctx: Context) -> None:
    policy = policy_from_args(args, ctx)
    if policy is None:
        raise InvalidInput("give the schedule with --every (for example --every 30d)")
    status = ctx.vault.rotation.set_policy(ctx.caller, args.path, policy,
                                           next_due=next_due_from_args(args))
    ctx.output.message(f"{status.path}: rotated by {status.rotator} every {status.schedule}; "
                       f"next due {status.next_due_at:%Y-%m-%d %H:%M:%S}Z", status)


def _show(args: argparse.Namespace, ctx: Context) -> None:
    ctx.output.fields(vars(ctx.vault.rotation.show(ctx.caller, args.path)))


def _status(args: argparse.Namespace, ctx: Context) -> None:
    ctx.output.table(ctx.vault.rotation.status(ctx.caller),
                     ["path", "rotator", "schedule", "next_due_at", "current_version", "step",
                      "last_result", "failures", "last_error"],
                     empty="no rotation policies you may list")


def _clear(args: argparse.Namespace, ctx: Context) -> None:
    ctx.vault.rotation.clear_policy(ctx.caller, args.path)
    ctx.output.message(f"{args.path}: no longer rotated")


def _cancel(args: argparse.Namespace, ctx: Context) -> None:
    ctx.vault.rotation.cancel(ctx.caller, args.path)
    ctx.output.message(f"{args.path}: the half-done rotation was abandoned")


def _rotators(args: argparse.Namespace, ctx: Context) -> None:
    ctx.output.table([{"name": n, "object": o} for n, o in sorted(available().items())],
                     ["name", "object"])


@dataclass(frozen=True)
class _Row:
    path: str
    result: str
    version: int | None
    steps: str
    error: str
    asset_event: str = ""


def _rotate(args: argparse.Namespace, ctx: Context) -> None:
    rotation = ctx.vault.rotation
    paths = rotation.due(ctx.caller) if args.due else [args.path]
    rows: list[_Row] = []
    with ctx.output.progress("rotating", len(paths)) as advance:
        for path in paths:
            try:
                r, event = _rotate_one(ctx, path, args.due, args.asset_event)
                rows.append(_Row(path, r.result, r.version, ",".join(r.steps), "",
                                 event or ""))
            except MLSecretsError as exc:  # one bad secret does not stop the others
                if not args.due:
                    raise
                rows.append(_Row(path, "busy" if isinstance(exc, RotationBusy) else "failed",
                                 None, "", f"{type(exc).__name__}: {exc}"))
            advance(1)
    destroyed = rotation.retain(ctx.caller) if args.due else []
    failed = [r for r in rows if r.result == "failed"]
    if ctx.output.as_json:
        ctx.output.data({"results": rows, "destroyed": destroyed})
    else:
        columns = ["path", "result", "version", "steps", "error"]
        if any(r.asset_event for r in rows):
            columns.append("asset_event")
        ctx.output.table(rows, columns, empty="nothing is due")
        counts = {k: sum(r.result == k for r in rows)
                  for k in ("rotated", "invalidated", "cancelled", "failed", "busy")}
        ctx.output.warn(", ".join(f"{v} {k}" for k, v in counts.items())
                        + (f"; destroyed after retention: {', '.join(destroyed)}"
                           if destroyed else ""))
    if failed:
        raise RotationFailed(f"{len(failed)} rotation(s) failed; the current versions are "
                             "unchanged ('mlsecrets rotation status' shows why)")


def _rotate_one(ctx: Context, path: str, only_if_due: bool,
                asset_event: bool) -> tuple[RotationResult, str | None]:
    """Rotate ``path``; a finished rotation emits the asset event the rotation DAG would,
    so the DAGs that follow the secret hear of it: through the service when the vault is
    remote (the API server's plugin has Airflow's database), else here when this host has
    an Airflow to tell. The event, or why none, for the table."""
    from airflow_provider_mlsecrets.client.remote import RemoteRotation

    rotation = ctx.vault.rotation
    if asset_event and isinstance(rotation, RemoteRotation):
        return rotation.rotate_and_announce(ctx.caller, path, only_if_due=only_if_due)
    result = rotation.rotate(ctx.caller, path, only_if_due=only_if_due)
    if not asset_event or result.result != "rotated":
        return result, None
    from airflow_provider_mlsecrets.rotation.events import airflow_configured, announce_rotated

    if not airflow_configured():
        return result, "no asset event: no Airflow is configured here (AIRFLOW_HOME)"
    return result, announce_rotated(result.path, result.version)
