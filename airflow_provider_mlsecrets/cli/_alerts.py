"""``mlsecrets alerts``: run a pass, list, acknowledge, and test the notifiers
(docs/alerts.md). Each is an audited operation needing ``audit``; through ``MLSECRETS_URL``
the service does the work."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from airflow_provider_mlsecrets.plain import plain

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context

COLUMNS = ("id", "severity", "rule", "event_ts", "principal", "path", "record", "delivery",
           "acked_by")


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    alerts = commands.add_parser("alerts", parents=[common],
                                 help="alerts raised from the audit trail (docs/alerts.md)")
    sub = alerts.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", parents=[common], help="evaluate the rules once and deliver "
                                                       "what is due")
    run.set_defaults(handler=_run)
    listing = sub.add_parser("list", parents=[common], help="alerts, newest first")
    listing.add_argument("--open", action="store_true", help="only unacknowledged ones")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (100)")
    listing.set_defaults(handler=_list)
    ack = sub.add_parser("ack", parents=[common], help="acknowledge an alert (audited)")
    ack.add_argument("alert_id", type=int, metavar="ID")
    ack.set_defaults(handler=_ack)
    test = sub.add_parser("test", parents=[common],
                          help="send a test alert through every configured notifier")
    test.set_defaults(handler=_test)


def _run(args: argparse.Namespace, ctx: Context) -> None:
    result = ctx.vault.alerts.run(ctx.caller)
    ctx.output.message(
        f"{result.records} audit record(s) evaluated, {result.raised} alert(s) raised; "
        f"{result.sent} delivered, {result.failed} failed (retried later), {result.pending} "
        "waiting for delivery" + "".join(f"\n  {e}" for e in result.errors), result)


def _list(args: argparse.Namespace, ctx: Context) -> None:
    views = ctx.vault.alerts.list(ctx.caller, open_only=args.open, limit=args.limit)
    if ctx.output.as_json:
        ctx.output.data(views)
        return
    rows = []
    for v in plain(views):
        delivered = ("delivered" if v["delivered_at"] else
                     f"pending ({v['attempts']} failed: {v['last_error']})" if v["attempts"]
                     else "pending")
        record = "-" if v["chain"] is None else f"{v['chain']}/{v['seq']}"
        rows.append({k: escape(str(x)) if isinstance(x, str) else x for k, x in {
            **v, "record": record, "delivery": delivered}.items()})
    ctx.output.table(rows, COLUMNS, empty="no alerts" + (" open" if args.open else ""))


def _ack(args: argparse.Namespace, ctx: Context) -> None:
    view = ctx.vault.alerts.ack(ctx.caller, args.alert_id)
    ctx.output.message(f"alert {view.id} ({view.rule}) acknowledged by {view.acked_by}", view)


def _test(args: argparse.Namespace, ctx: Context) -> int:
    results = ctx.vault.alerts.test(ctx.caller)
    if not results:
        ctx.output.message("no notifier is configured (MLSECRETS_ALERT_RULES, \"notifiers\")",
                           results)
        return 1
    ctx.output.message("\n".join(f"{name}: {outcome}" for name, outcome in results.items()),
                       results)
    return 0 if all(v == "sent" for v in results.values()) else 1


