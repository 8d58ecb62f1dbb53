"""``mlsecrets audit …``: tail, export, verify, checkpoint."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets._files import private_file
from airflow_provider_mlsecrets.audit.publish import destination, read_checkpoint
from airflow_provider_mlsecrets.audit.record import Outcome
from airflow_provider_mlsecrets.cli._output import write_lines
from airflow_provider_mlsecrets.durations import parse_moment
from airflow_provider_mlsecrets.errors import AuditChainBroken, InvalidInput
from airflow_provider_mlsecrets.plain import plain
from airflow_provider_mlsecrets.service.audit import AuditFilter

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context

COLUMNS = ["seq", "ts", "principal", "caller", "action", "path", "version", "outcome", "reason"]


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--principal")
    filters.add_argument("--path-prefix", metavar="PREFIX")
    filters.add_argument("--action", help="e.g. secret.read, secret.inject, grant.create")
    filters.add_argument("--outcome", choices=[o.value for o in Outcome])
    filters.add_argument("--since", metavar="WHEN", help="ISO time, or a duration ago (2h)")
    filters.add_argument("--until", metavar="WHEN", help="ISO time, or a duration ago")

    group = commands.add_parser("audit", help="the tamper-evident audit trail", parents=[common])
    sub = group.add_subparsers(dest="action_name", metavar="ACTION", required=True)
    tail = sub.add_parser("tail", parents=[common, filters], help="the newest records")
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.set_defaults(handler=_tail)
    export = sub.add_parser("export", parents=[common, filters],
                            help="every matching record as JSON lines")
    export.set_defaults(handler=_export)
    verify = sub.add_parser("verify", parents=[common], help="prove the trail was not altered")
    verify.add_argument("--checkpoint", metavar="FILE|URL",
                        help="also prove the tail was not cut off since this checkpoint (a "
                             "path, or an object-storage URL such as s3://bucket/cp.json)")
    verify.add_argument("--all-seals", action="store_true",
                        help="check every record's HSM seal, not only the newest")
    verify.set_defaults(handler=_verify)
    checkpoint = sub.add_parser("checkpoint", parents=[common],
                                help="verify, then write a checkpoint to keep elsewhere")
    checkpoint.add_argument("--out", required=True, metavar="FILE|URL",
                            help="a new file: a path (written 0600) or an object-storage URL "
                                 "(file://, s3://, gs://, …); an existing one is refused")
    checkpoint.set_defaults(handler=_checkpoint)
    prune = sub.add_parser("prune", parents=[common],
                           help="move records older than a moment out to a verifiable file")
    prune.add_argument("--before", required=True, metavar="WHEN",
                       help="ISO time, or a duration ago (90d)")
    prune.add_argument("--out", type=Path, required=True, metavar="FILE",
                       help="where the pruned records go (written only if the prune commits)")
    prune.set_defaults(handler=_prune)
    check = sub.add_parser("verify-export", parents=[common],
                           help="check a file written by 'audit prune' on its own")
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument("--checkpoint", metavar="FILE|URL",
                       help="also check a checkpoint whose records this export holds (one "
                            "that 'audit verify' reports as pruned)")
    check.set_defaults(handler=_verify_export)


def _filters(args: argparse.Namespace) -> AuditFilter:
    def moment(text: str | None) -> datetime | None:
        return parse_moment(text, future=False) if text else None

    return AuditFilter(principal=args.principal, path_prefix=args.path_prefix,
                       action=args.action, outcome=args.outcome, since=moment(args.since),
                       until=moment(args.until))


def _tail(args: argparse.Namespace, ctx: Context) -> None:
    rows = ctx.vault.audit.tail(ctx.caller, args.n, _filters(args))
    ctx.output.table(rows, COLUMNS, empty="no matching records")


def _export(args: argparse.Namespace, ctx: Context) -> None:
    write_lines(json.dumps(plain(r), sort_keys=True)
                for r in ctx.vault.audit.export(ctx.caller, _filters(args)))


def _verify(args: argparse.Namespace, ctx: Context) -> None:
    checkpoint = read_checkpoint(args.checkpoint) if args.checkpoint else None
    total = ctx.vault.audit.count(ctx.caller)
    with ctx.output.progress("verifying the audit trail", total) as advance:
        report = ctx.vault.audit.verify(ctx.caller, checkpoint=checkpoint,
                                        all_seals=args.all_seals, progress=advance)
    ctx.output.message(
        f"audit trail OK: {report.records} records in {report.chains} chain(s), "
        f"{report.seals_checked} seal(s) checked in the HSM"
        + (", checkpoint matched" if checkpoint else "")
        + ", high-water marks in the HSM matched and moved"
        + "".join(f"\n  note: {note}" for note in report.notes),
        {"ok": True, "records": report.records, "chains": report.chains,
         "seals_checked": report.seals_checked, "checkpoint": checkpoint is not None,
         "notes": report.notes})


def _checkpoint(args: argparse.Namespace, ctx: Context) -> None:
    out = destination(args.out)  # a bad URL or an existing name fails before anything runs
    point = ctx.vault.audit.checkpoint(ctx.caller)
    out.write(point)
    where = ", ".join(f"chain {c.chain} at record {c.seq}" for c in point.chains)
    ctx.output.message(f"checkpoint written to {out.display} ({where}); keep it away from "
                       "the database", json.loads(point.to_json()))


def _prune(args: argparse.Namespace, ctx: Context) -> None:
    before = parse_moment(args.before, future=False)
    with private_file(args.out) as handle:
        info = ctx.vault.audit.prune(ctx.caller, before, handle)
    total = sum(info.pruned.values())
    lines = [f"{total} records older than {before:%Y-%m-%dT%H:%M:%SZ} moved to {args.out}"]
    lines += [f"  chain {chain}: {count} records, now starts after record "
              f"{info.anchors[chain][0]}" for chain, count in sorted(info.pruned.items())]
    lines.append("keep the file with the trail's checkpoints; 'mlsecrets audit verify' checks "
                 "what remains")
    ctx.output.message("\n".join(lines), {
        "file": str(args.out), "records": total,
        "chains": {str(c): {"pruned": n, "starts_after": info.anchors[c][0]}
                   for c, n in info.pruned.items()}})


def _verify_export(args: argparse.Namespace, ctx: Context) -> None:
    try:
        lines = args.file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {args.file}: {exc}") from None
    checkpoint = read_checkpoint(args.checkpoint) if args.checkpoint else None
    report = ctx.vault.audit.verify_export(ctx.caller, lines, checkpoint=checkpoint)
    if not report.ok:
        raise AuditChainBroken("; ".join(report.problems), chain=0, seq=None)
    ctx.output.message(f"export OK: {report.records} records in {report.chains} chain(s), "
                       "each from its start hash to its HSM-sealed checkpoint"
                       + (f"; {report.points_matched} checkpoint record(s) matched"
                          if checkpoint else ""),
                       {"ok": True, "records": report.records, "chains": report.chains,
                        "checkpoint_records_matched": report.points_matched})
