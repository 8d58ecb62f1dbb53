"""``mlsecrets init``, ``status`` and ``key list``."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets._files import write_private
from airflow_provider_mlsecrets.errors import ConfigurationError, IntegrityError
from airflow_provider_mlsecrets.keys.softhsm import provision
from airflow_provider_mlsecrets.settings import CONFIG_FILE

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    init = commands.add_parser("init", parents=[common],
                               help="create the vault (idempotent: a second run changes nothing)")
    init.add_argument("--dev", action="store_true",
                      help="provision a local SoftHSM2 token under MLSECRETS_HOME if no HSM is "
                           "configured")
    init.add_argument("--token-out", type=Path, metavar="FILE",
                      help="where to write the first security engineer's token "
                           "(default: $MLSECRETS_HOME/admin.token)")
    init.add_argument("--admin", default="admin", metavar="NAME",
                      help="the first security engineer's name (default: admin)")
    init.set_defaults(handler=_init)
    commands.add_parser("status", parents=[common], help="where the vault is and what it holds"
                        ).set_defaults(handler=_status)
    key = commands.add_parser("key", parents=[common], help="key-encryption keys")
    key_sub = key.add_subparsers(dest="action", metavar="ACTION", required=True)
    key_sub.add_parser("list", parents=[common], help="list key versions"
                       ).set_defaults(handler=_key_list)
    rotate = key_sub.add_parser(
        "rotate", parents=[common],
        help="create KEK n+1 and re-wrap every data key under it (no payload is decrypted)")
    rotate.add_argument("--resume", action="store_true",
                        help="only finish an interrupted rotation; create no new key")
    rotate.add_argument("--keep-retired", action="store_true",
                        help="do not disable retired keys (sealed values made under them "
                             "keep opening)")
    rotate.set_defaults(handler=_key_rotate)


def _init(args: argparse.Namespace, ctx: Context) -> None:
    settings = ctx.settings
    if settings.url:
        raise ConfigurationError(f"MLSECRETS_URL is set ({settings.url}): a vault is "
                                 "initialised where it runs, with its HSM and database; unset "
                                 "MLSECRETS_URL there")
    _private_home(settings.home, ctx)
    if not settings.pkcs11_module:
        if not args.dev:
            raise ConfigurationError(
                "no HSM configured: set MLSECRETS_PKCS11_MODULE, MLSECRETS_PKCS11_TOKEN and "
                "MLSECRETS_PKCS11_PIN_FILE, or run 'mlsecrets init --dev' for a local SoftHSM2 "
                "token")
        dev = provision(settings.home, settings.pkcs11_token)
        config_path = settings.home / CONFIG_FILE
        config = {**settings.as_config(), "MLSECRETS_PKCS11_MODULE": dev.module,
                  "MLSECRETS_SOFTHSM2_CONF": str(dev.conf),
                  "MLSECRETS_PKCS11_PIN_FILE": str(dev.pin_file)}
        write_private(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
        ctx.output.warn(f"provisioned a SoftHSM2 token '{settings.pkcs11_token}' under "
                        f"{settings.home}; settings recorded in {config_path}")
        ctx.reset()
    token_out = args.token_out or ctx.settings.home / "admin.token"
    delivered: list[Path] = []

    def deliver(token: str) -> None:
        write_private(token_out, token + "\n")
        delivered.append(token_out)

    try:
        result = ctx.vault.initialise(args.admin, deliver)
    except BaseException:
        for path in delivered:  # the engineer was not created: its token must not linger
            path.unlink(missing_ok=True)
        raise
    if not result.changed:
        ctx.output.message(f"vault {result.vault_id} is already initialised; nothing changed",
                           {"vault_id": result.vault_id, "changed": False, "created": []})
        return
    lines = [f"vault {result.vault_id} initialised:"] + [f"  created {c}" for c in result.created]
    if result.admin_token is not None:
        lines.append(f"the token of {result.admin_name} (security_engineer) is in {token_out} "
                     "(mode 0600); set MLSECRETS_TOKEN_FILE to it")
    ctx.output.message("\n".join(lines), {
        "vault_id": result.vault_id, "changed": True, "created": result.created,
        "token_file": str(token_out) if result.admin_token else None})


def _private_home(home: Path, ctx: Context) -> None:
    """``MLSECRETS_HOME`` holds the PIN file, tokens and the default database: create it
    0700, and say so when an existing one is open to other users (it is the user's directory
    to change, so it is not changed here)."""
    try:
        home.mkdir(parents=True, mode=0o700)
        return
    except FileExistsError:
        pass
    mode = stat.S_IMODE(home.stat().st_mode)
    if mode & 0o077:
        ctx.output.warn(f"warning: {home} (MLSECRETS_HOME) has mode {mode:04o}: other users "
                        "can enter it and read any file in it that is not private (a token "
                        f"saved with '>', a checkpoint); 'chmod 700 {home}'")
    stale = home / "pkcs11.so-pin"
    if stale.exists():
        ctx.output.warn(f"warning: {stale} was written by an earlier release; nothing reads "
                        "it, and it lets whoever reads it reset the token's user PIN: delete it")


def _status(args: argparse.Namespace, ctx: Context) -> None:
    ctx.output.fields(ctx.vault.status(ctx.caller))


def _key_rotate(args: argparse.Namespace, ctx: Context) -> None:
    keys = ctx.vault.keys
    created = False if args.resume else keys.start(ctx.caller)
    with ctx.output.progress("re-wrapping data keys", keys.pending(ctx.caller)) as advance:
        report = keys.finish(ctx.caller, created=created, disable=not args.keep_retired,
                             progress=advance)
    lines = [f"current key: {report.current}" + (" (new)" if report.created else ""),
             f"data keys re-wrapped: {report.rewrapped}",
             "disabled: " + (", ".join(report.disabled) or "nothing")]
    if report.disabled:
        lines.append("sealed values made under a disabled key no longer open: seal them again")
    if report.failed:
        lines.append("did NOT authenticate (left as they were, their key stays enabled): "
                     + ", ".join(report.failed))
    ctx.output.message("\n".join(lines), report)
    if report.failed:
        raise IntegrityError(f"{len(report.failed)} data key(s) did not authenticate; "
                             "see 'mlsecrets audit tail --action key.rewrap'")


def _key_list(args: argparse.Namespace, ctx: Context) -> None:
    ctx.output.table(ctx.vault.key_list(ctx.caller),
                     ["label", "version", "state", "versions_wrapped", "sensitive",
                      "extractable", "created_at"])
