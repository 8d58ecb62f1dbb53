"""``mlsecrets secret …``. A value is never taken from the command line."""

from __future__ import annotations

import argparse
import secrets
import string
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets.cli._rotation import (
    add_policy_arguments,
    next_due_from_args,
    policy_from_args,
)
from airflow_provider_mlsecrets.errors import ConfigurationError, InvalidInput

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context

GENERATE_ALPHABET = string.ascii_letters + string.digits
MAX_GENERATE = 4096


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("secret", help="store and read secrets", parents=[common])
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)

    put = sub.add_parser("put", parents=[common], help="write a new version")
    put.add_argument("path")
    source = put.add_mutually_exclusive_group(required=True)
    source.add_argument("--value-file", type=Path, metavar="FILE", help="read the value from FILE")
    source.add_argument("--stdin", action="store_true", help="read the value from standard input")
    source.add_argument("--generate", type=int, metavar="N",
                        help="generate a random value of N letters and digits")
    source.add_argument("--connection-uri", metavar="FILE|-",
                        help="an Airflow connection URI from FILE or stdin, validated first")
    source.add_argument("--connection-json", metavar="FILE|-",
                        help="an Airflow connection as JSON from FILE or stdin, validated first")
    put.add_argument("--allow-empty", action="store_true",
                     help="store an empty value (refused otherwise: an empty standard input "
                          "is more often a mistake than a value)")
    put.add_argument("--cas", type=int, metavar="N",
                     help="write only if the newest version is N (0: only if new)")
    put.add_argument("--description")
    put.add_argument("--owner")
    add_policy_arguments(put, flag="--rotate-every")
    put.set_defaults(handler=_put)

    get = sub.add_parser("get", parents=[common], help="print a value (security engineers)")
    get.add_argument("path")
    get.add_argument("--version", type=int)
    get.add_argument("--reason", help="why you read it (8 to 500 characters, required; kept "
                                      "in the audit trail)")
    get.set_defaults(handler=_get)

    ls = sub.add_parser("list", parents=[common], help="list secrets (metadata only)")
    ls.add_argument("prefix", nargs="?", default="")
    ls.add_argument("--deleted", action="store_true", help="include soft-deleted secrets")
    ls.set_defaults(handler=_list)

    versions = sub.add_parser("versions", parents=[common], help="list a secret's versions")
    versions.add_argument("path")
    versions.set_defaults(handler=_versions)

    for name, help_text in (("delete", "soft-delete (keeps every version)"),
                            ("undelete", "restore a soft-deleted secret")):
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.add_argument("path")
        p.set_defaults(handler=_delete if name == "delete" else _undelete)

    seal = commands.add_parser("seal", parents=[common],
                               help="turn a value into a token safe to commit to git, bound "
                                    "to PATH; it opens only in a task granted inject on PATH")
    seal.add_argument("path")
    seal_source = seal.add_mutually_exclusive_group(required=True)
    seal_source.add_argument("--value-file", type=Path, metavar="FILE")
    seal_source.add_argument("--stdin", action="store_true")
    seal_source.add_argument("--generate", type=int, metavar="N")
    seal.set_defaults(handler=_seal)

    reseal = commands.add_parser(
        "reseal", parents=[common],
        help="re-seal 'sealed:PATH:TOKEN' references (one per line on stdin) under the "
             "current key; run after 'key rotate --keep-retired', before retired keys go")
    reseal.set_defaults(handler=_reseal)

    destroy = sub.add_parser("destroy", parents=[common],
                             help="erase one version's ciphertext for good")
    destroy.add_argument("path")
    destroy.add_argument("--version", type=int, required=True)
    destroy.set_defaults(handler=_destroy)


def read_value(args: argparse.Namespace, limit: int) -> bytes:
    """The value from a file, stdin or the generator; at most ``limit`` + 1 bytes are read."""
    if args.generate is not None:
        if not 1 <= args.generate <= MAX_GENERATE:
            raise InvalidInput(f"--generate takes a length from 1 to {MAX_GENERATE}")
        return "".join(secrets.choice(GENERATE_ALPHABET)
                       for _ in range(args.generate)).encode()
    if args.stdin:
        if sys.stdin is None:
            raise InvalidInput("--stdin was given but there is no standard input")
        binary = getattr(sys.stdin, "buffer", None)  # absent on a text-only stream
        if binary is None:
            return sys.stdin.read(limit + 1).encode()[:limit + 1]
        return bytes(binary.read(limit + 1))
    try:
        with open(args.value_file, "rb") as handle:
            data: bytes = handle.read(limit + 1)
            return data
    except OSError as exc:
        raise InvalidInput(f"cannot read --value-file {args.value_file}: {exc.strerror}") from None


def _put(args: argparse.Namespace, ctx: Context) -> None:
    limit = ctx.settings.max_value_bytes
    policy = policy_from_args(args, ctx)  # a bad policy fails before anything is written
    if policy is not None and ctx.settings.url:
        raise ConfigurationError("rotation policies are set where the vault runs, not through "
                                 "MLSECRETS_URL; write the value, then run 'mlsecrets rotation "
                                 "set' there")
    if args.connection_uri is not None or args.connection_json is not None:
        from airflow_provider_mlsecrets.cli._airflow import connection_value

        as_json = args.connection_json is not None
        value = connection_value(args.path, args.connection_json if as_json
                                 else args.connection_uri, as_json=as_json, limit=limit)
    else:
        value = read_value(args, limit)
    if not value and not args.allow_empty:
        raise InvalidInput("the value is empty; give --allow-empty to store an empty value")
    info = ctx.vault.secrets.put(ctx.caller, args.path, value, cas=args.cas,
                                 description=args.description, owner=args.owner)
    del value
    if policy is None:
        ctx.output.message(f"{info.path}: version {info.version} written", info)
        return
    status = ctx.vault.rotation.set_policy(ctx.caller, args.path, policy,
                                           next_due=next_due_from_args(args))
    ctx.output.message(f"{info.path}: version {info.version} written\n"
                       f"{info.path}: rotated by {status.rotator} every {status.schedule}; "
                       f"next due {status.next_due_at:%Y-%m-%d %H:%M:%S}Z",
                       {"version": info, "rotation": status})


def _seal(args: argparse.Namespace, ctx: Context) -> None:
    token = ctx.vault.secrets.seal(ctx.caller, args.path,
                                   read_value(args, ctx.settings.max_value_bytes))
    if ctx.output.as_json:
        ctx.output.data({"path": args.path, "reference": f"sealed:{args.path}:{token}"})
    else:
        print(f"sealed:{args.path}:{token}")


def _reseal(args: argparse.Namespace, ctx: Context) -> None:
    from airflow_provider_mlsecrets.injection.references import parse_reference

    out = []
    for line in sys.stdin.read().split():
        ref = parse_reference(line)
        if ref.kind != "sealed" or ref.token is None:
            raise InvalidInput("reseal reads sealed:PATH:TOKEN references, one per line")
        out.append(f"sealed:{ref.target}:"
                   f"{ctx.vault.secrets.reseal(ctx.caller, ref.target, ref.token)}")
    if ctx.output.as_json:
        ctx.output.data(out)
    else:
        print("\n".join(out))


def _get(args: argparse.Namespace, ctx: Context) -> None:
    value = ctx.vault.secrets.read(ctx.caller, args.path, args.version, reason=args.reason)
    if ctx.output.as_json:
        try:
            ctx.output.data({"path": args.path, "value": value.decode("utf-8")})
        except UnicodeDecodeError:
            raise InvalidInput("the value is not UTF-8 text; read it without --json") from None
        return
    sys.stdout.buffer.write(value)
    sys.stdout.buffer.flush()


def _list(args: argparse.Namespace, ctx: Context) -> None:
    rows = ctx.vault.secrets.list(ctx.caller, args.prefix, include_deleted=args.deleted)
    ctx.output.table(rows, ["path", "current_version", "latest_version", "updated_at",
                            "description"] + (["deleted_at"] if args.deleted else []),
                     empty="no secrets you may list here")


def _versions(args: argparse.Namespace, ctx: Context) -> None:
    rows = ctx.vault.secrets.versions(ctx.caller, args.path)
    ctx.output.table(rows, ["version", "state", "kek_id", "created_by", "created_at",
                            "destroyed_at"])


def _delete(args: argparse.Namespace, ctx: Context) -> None:
    ctx.vault.secrets.delete(ctx.caller, args.path)
    ctx.output.message(f"{args.path}: deleted (versions kept; 'secret undelete' restores it)")


def _undelete(args: argparse.Namespace, ctx: Context) -> None:
    ctx.vault.secrets.undelete(ctx.caller, args.path)
    ctx.output.message(f"{args.path}: restored")


def _destroy(args: argparse.Namespace, ctx: Context) -> None:
    ctx.vault.secrets.destroy(ctx.caller, args.path, args.version)
    ctx.output.message(f"{args.path}: version {args.version} destroyed")
