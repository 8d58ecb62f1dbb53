"""``mlsecrets principal …``, ``grant``, ``revoke`` and ``policy show`` (``policy
critical`` is in _break_glass)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets.cli import _break_glass
from airflow_provider_mlsecrets.cli._output import credential_file
from airflow_provider_mlsecrets.durations import parse_moment
from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.policy.roles import Capability, Role

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("principal", help="people and pipelines", parents=[common])
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", parents=[common],
                            help="create a principal; prints its token once")
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--expires", metavar="WHEN",
                        help="a duration from now (30d) or a date and time (2027-01-31)")
    create.add_argument("--out", type=Path, metavar="FILE",
                        help="write the token to FILE (created with mode 0600; an existing "
                             "FILE is refused) instead of printing it")
    create.add_argument("--force", action="store_true",
                        help="with --out: replace FILE if it exists")
    create.set_defaults(handler=_create)
    sub.add_parser("list", parents=[common], help="list principals").set_defaults(handler=_list)
    revoke = sub.add_parser("revoke", parents=[common], help="revoke a principal's token")
    revoke.add_argument("name")
    revoke.set_defaults(handler=_revoke)

    grant = commands.add_parser("grant", parents=[common],
                                help="allow (or --deny) capabilities on a path pattern")
    grant.add_argument("principal")
    grant.add_argument("pattern", help="a path; '*' is one segment, '**' any number")
    grant.add_argument("capabilities", nargs="+", metavar="CAPABILITY",
                       help=", ".join(c.value for c in Capability))
    grant.add_argument("--deny", action="store_true", help="an explicit deny, which always wins")
    grant.set_defaults(handler=_grant)

    revoke_grant = commands.add_parser(
        "revoke", parents=[common], help="remove a principal's grants on a pattern, or the "
                                         "grants an access review flags")
    revoke_grant.add_argument("principal", nargs="?")
    revoke_grant.add_argument("pattern", nargs="?")
    revoke_grant.add_argument("--from-review", type=Path, metavar="FILE",
                              help="an access review ('mlsecrets review'), verified first")
    revoke_grant.add_argument("--unused", action="store_true",
                              help="with --from-review: revoke the grants it flags as unused "
                                   "for its window")
    revoke_grant.set_defaults(handler=_revoke_grant)

    policy = commands.add_parser("policy", help="show grants", parents=[common])
    policy_sub = policy.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = policy_sub.add_parser("show", parents=[common], help="show grants")
    show.add_argument("principal", nargs="?")
    show.set_defaults(handler=_policy)
    _break_glass.register_policy(policy_sub, common)


def _create(args: argparse.Namespace, ctx: Context) -> None:
    expires = parse_moment(args.expires, future=True) if args.expires else None
    if args.out is not None:
        _create_into(args, ctx, expires)
        return
    if args.force:
        raise InvalidInput("--force goes with --out FILE")
    token = ctx.vault.access.create_principal(ctx.caller, args.name, args.role, expires)
    if ctx.output.as_json:
        ctx.output.data({"name": args.name, "role": args.role, "token": token})
    else:
        print(token)
        if sys.stdout.isatty():
            ctx.output.warn(f"principal {args.name} created as {args.role}; the token above "
                            "is shown once: store it now")
        else:  # redirected: the token is wherever standard output went, with its mode
            ctx.output.warn(f"principal {args.name} created as {args.role}; its token went "
                            "to standard output, once. A redirected file keeps your umask's "
                            "mode: prefer --out FILE, which writes it 0600")


def _create_into(args: argparse.Namespace, ctx: Context, expires: datetime | None) -> None:
    """The token goes to a 0600 file opened before the principal is made: a taken or
    unwritable file costs no principal, and a refused create leaves no file."""
    with credential_file(args.out, force=args.force) as handle:
        token = ctx.vault.access.create_principal(ctx.caller, args.name, args.role, expires)
        handle.write(token + "\n")
    ctx.output.message(
        f"principal {args.name} created as {args.role}; its token is in {args.out} (mode "
        "0600), shown nowhere else",
        {"name": args.name, "role": args.role, "token_file": str(args.out)})


def _list(args: argparse.Namespace, ctx: Context) -> None:
    rows = ctx.vault.access.list_principals(ctx.caller)
    ctx.output.table([{**r.__dict__, "status": r.status} for r in rows],
                     ["name", "role", "status", "created_by", "created_at", "expires_at"])


def _revoke(args: argparse.Namespace, ctx: Context) -> None:
    ctx.vault.access.revoke_principal(ctx.caller, args.name)
    ctx.output.message(f"{args.name}: token revoked")


def _grant(args: argparse.Namespace, ctx: Context) -> None:
    info = ctx.vault.access.grant(ctx.caller, args.principal, args.pattern, args.capabilities,
                                  deny=args.deny)
    ctx.output.message(f"{info.effect} {info.capabilities} on {info.pattern} for {info.principal}",
                       info)


def _revoke_grant(args: argparse.Namespace, ctx: Context) -> None:
    if args.from_review is not None or args.unused:
        if args.principal or args.pattern or args.from_review is None or not args.unused:
            raise InvalidInput("give either PRINCIPAL PATTERN, or --from-review FILE --unused")
        _revoke_from_review(args.from_review, ctx)
        return
    if not args.principal or not args.pattern:
        raise InvalidInput("give PRINCIPAL PATTERN (or --from-review FILE --unused)")
    n = ctx.vault.access.revoke_grant(ctx.caller, args.principal, args.pattern)
    ctx.output.message(f"removed {n} grant(s) of {args.principal} on {args.pattern}",
                       {"removed": n})


def _policy(args: argparse.Namespace, ctx: Context) -> None:
    rows = ctx.vault.access.policy(ctx.caller, args.principal)
    ctx.output.table(rows, ["principal", "role", "effect", "pattern", "capabilities",
                            "created_by"], empty="no grants")


def _revoke_from_review(path: Path, ctx: Context) -> None:
    """Verify the review, then revoke each allow grant it flags as unused, as it was when
    the review saw it: a grant changed since (other capabilities, granted again), gone, or
    sharing its pattern with an explicit deny (which revoking would lift too) is left, and
    said so. Each revocation is a ``grant.revoke`` record carrying the review's id; a
    ``review.revoke`` record sums them up."""
    from airflow_provider_mlsecrets.audit.record import format_ts
    from airflow_provider_mlsecrets.cli._review import describe, embedded, read_review
    from airflow_provider_mlsecrets.errors import NotFound
    from airflow_provider_mlsecrets.service import Caller

    vault = embedded(ctx, "revoking from a review")
    check = vault.insight.verify_review(ctx.caller, read_review(path))
    ctx.output.warn(describe(check))
    base = ctx.caller
    caller = Caller(base.token, {**base.context, "review": check.review_id,
                                 "review_flag": "unused"}, verified=base.verified)
    revoked: list[str] = []
    skipped: list[str] = []
    current: dict[str, list[Any]] = {}
    for flagged in check.unused_grants:
        name, pattern = str(flagged["principal"]), str(flagged["pattern"])
        label = f"{name} on {pattern}"
        if name not in current:
            try:
                current[name] = vault.access.policy(caller, name)
            except NotFound:
                current[name] = []
        grants = [g for g in current[name] if g.pattern == pattern]
        allow = [g for g in grants if g.effect == "allow"]
        if not allow:
            skipped.append(f"{label}: no longer granted")
        elif any(g.effect == "deny" for g in grants):
            skipped.append(f"{label}: an explicit deny shares the pattern, which revoking "
                           "would lift too (revoke it by hand if meant)")
        elif (allow[0].capabilities != flagged["capabilities"]
              or format_ts(allow[0].created_at) != flagged["created_at"]):
            skipped.append(f"{label}: changed since the review")
        else:
            vault.access.revoke_grant(caller, name, pattern)
            revoked.append(f"{label} ({flagged['capabilities']})")
    vault.insight.note_revocations(caller, check.review_id, revoked, skipped)
    lines = [f"revoked {len(revoked)} grant(s) the review flags as unused"]
    lines += [f"  revoked {r}" for r in revoked] + [f"  left {s}" for s in skipped]
    ctx.output.message("\n".join(lines), {"review_id": check.review_id, "revoked": revoked,
                                          "skipped": skipped})
