"""``mlsecrets backup`` and ``mlsecrets restore``: a sealed snapshot of the whole vault."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets._files import private_file
from airflow_provider_mlsecrets.errors import ConfigurationError, IntegrityError

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    backup = commands.add_parser(
        "backup", parents=[common],
        help="write a consistent snapshot of the vault (ciphertexts and wrapped keys only, "
             "sealed by the HSM)")
    backup.add_argument("--out", type=Path, required=True, metavar="FILE")
    backup.set_defaults(handler=_backup)
    restore = commands.add_parser(
        "restore", parents=[common],
        help="load a backup into an empty vault database, with the HSM that made it")
    restore.add_argument("--in", dest="source", type=Path, required=True, metavar="FILE")
    restore.add_argument(
        "--accept-rollback", action="store_true",
        help="restore even though the backup is older than the HSM's high-water mark of the "
             "audit trail (every record made since is lost; the restore records that)")
    restore.set_defaults(handler=_restore)


def _local(ctx: Context, what: str) -> None:
    if ctx.settings.url:
        raise ConfigurationError(f"MLSECRETS_URL is set ({ctx.settings.url}): a vault is "
                                 f"{what} where it runs, with its HSM and database; unset "
                                 "MLSECRETS_URL there")


def _backup(args: argparse.Namespace, ctx: Context) -> None:
    _local(ctx, "backed up")
    with private_file(args.out) as handle:  # 0600, and only a finished file replaces FILE
        info = ctx.vault.backups.backup(ctx.caller, handle)
    total = sum(info.rows.values())
    ctx.output.message(
        f"vault {info.vault_id} (schema {info.schema}): {total} rows written to {args.out} "
        "(mode 0600). It holds no plaintext and no key; it restores only with this vault's "
        "HSM ('mlsecrets restore --in FILE').",
        {"vault_id": info.vault_id, "schema": info.schema, "file": str(args.out),
         "rows": info.rows})


def _restore(args: argparse.Namespace, ctx: Context) -> None:
    _local(ctx, "restored")
    info = ctx.vault.backups.restore(args.source, accept_rollback=args.accept_rollback)
    if not info.audit_ok:
        raise IntegrityError("the restored audit trail does not verify; run 'mlsecrets audit "
                             "verify' for the first bad record")
    ctx.output.message(
        f"vault {info.vault_id}: {sum(info.rows.values())} rows restored; audit trail of "
        f"{info.audit_records} records verified",
        {"vault_id": info.vault_id, "rows": info.rows, "audit_records": info.audit_records,
         "audit_ok": info.audit_ok})
