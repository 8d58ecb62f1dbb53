"""``mlsecrets access …`` (break-glass requests) and ``mlsecrets policy critical``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets.service.break_glass import DEFAULT_WINDOW, AccessRequestInfo

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context

_COLUMNS = ["id", "principal", "path", "state", "window", "requested_at", "decided_by",
            "expires_at", "justification"]


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser(
        "access", parents=[common],
        help="break-glass reads of critical paths: request, approve, deny, list")
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    request = sub.add_parser("request", parents=[common],
                             help="ask to read a critical path for a bounded window")
    request.add_argument("path")
    request.add_argument("--reason", required=True,
                         help="why (8 to 500 characters, kept in the audit trail)")
    request.add_argument("--for", dest="window", default=DEFAULT_WINDOW, metavar="DURATION",
                         help=f"the read window once approved (default {DEFAULT_WINDOW}, at "
                              "most MLSECRETS_BREAK_GLASS_MAX_WINDOW)")
    request.set_defaults(handler=_request)
    for name, text in (("approve", "open a request's read window (another security "
                                   "engineer)"),
                       ("deny", "refuse or withdraw a pending request")):
        decide = sub.add_parser(name, parents=[common], help=text)
        decide.add_argument("request_id", metavar="ID")
        decide.set_defaults(handler=_decide, approve=name == "approve")
    listing = sub.add_parser("list", parents=[common], help="requests, newest first")
    listing.add_argument("--open", action="store_true",
                         help="only pending requests and open windows")
    listing.set_defaults(handler=_list)


def register_policy(policy_sub: Any, common: argparse.ArgumentParser) -> None:
    """``policy critical``, beside ``policy show``."""
    critical = policy_sub.add_parser(
        "critical", parents=[common],
        help="show or change the paths whose reads need a second security engineer")
    critical.add_argument("--add", action="append", default=[], metavar="PATTERN")
    critical.add_argument("--remove", action="append", default=[], metavar="PATTERN")
    critical.set_defaults(handler=_critical)


def _row(info: AccessRequestInfo) -> dict[str, Any]:
    return {**info.__dict__, "window": _duration(info.window_seconds)}


def _duration(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _request(args: argparse.Namespace, ctx: Context) -> None:
    info = ctx.vault.break_glass.request(ctx.caller, args.path, args.reason, args.window)
    ctx.output.message(
        f"request {info.id}: {info.path} for {_duration(info.window_seconds)}, pending. "
        f"Another security engineer runs 'mlsecrets access approve {info.id}'; then read it "
        f"with 'mlsecrets secret get {info.path} --reason TEXT' within the window",
        _row(info))


def _decide(args: argparse.Namespace, ctx: Context) -> None:
    if args.approve:
        info = ctx.vault.break_glass.approve(ctx.caller, args.request_id)
        text = (f"request {info.id} approved: {info.principal} may read {info.path} until "
                f"{info.expires_at:%Y-%m-%d %H:%M:%S} UTC" if info.expires_at else "")
    else:
        info = ctx.vault.break_glass.deny(ctx.caller, args.request_id)
        text = f"request {info.id} denied: {info.principal} may not read {info.path}"
    ctx.output.message(text, _row(info))


def _list(args: argparse.Namespace, ctx: Context) -> None:
    rows = ctx.vault.break_glass.requests(ctx.caller, open_only=args.open)
    ctx.output.table([_row(r) for r in rows], _COLUMNS, empty="no break-glass requests")


def _critical(args: argparse.Namespace, ctx: Context) -> None:
    if args.add or args.remove:
        patterns = ctx.vault.break_glass.set_critical(ctx.caller, add=tuple(args.add),
                                                      remove=tuple(args.remove))
    else:
        patterns = ctx.vault.break_glass.critical(ctx.caller)
    ctx.output.table([{"pattern": p} for p in patterns], ["pattern"],
                     empty="no critical paths: a read needs only a reason")
