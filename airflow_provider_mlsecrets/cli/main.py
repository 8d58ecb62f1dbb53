"""``mlsecrets``: a thin CLI. Parse, call the vault, format; one fatal-exit path.

Exit codes: 0 success; 2 usage or invalid input; 3 access denied; 4 not found;
5 integrity failure; 6 ``doctor`` found a hazard; 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from airflow_provider_mlsecrets.cli import (
    _admin,
    _airflow,
    _alerts,
    _audit,
    _backup,
    _break_glass,
    _doctor,
    _principals,
    _review,
    _rotation,
    _secrets,
    _serve,
)
from airflow_provider_mlsecrets.cli._output import Output
from airflow_provider_mlsecrets.client import open_vault
from airflow_provider_mlsecrets.errors import MLSecretsError
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.settings import Settings


@dataclass
class Context:
    """What a command handler gets: parsed settings, a lazy vault, the caller and output."""

    output: Output
    _settings: Settings | None = None
    _vault: Vault | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.load()
        return self._settings

    @property
    def vault(self) -> Vault:
        if self._vault is None:
            self._vault = open_vault(self.settings)
        return self._vault

    def reset(self) -> None:
        """Forget settings and vault (after ``init --dev`` wrote a new config file)."""
        self._settings = self._vault = None

    @property
    def caller(self) -> Caller:
        return Caller.from_settings(self.settings, component="cli")


def build_parser(prog: str = "mlsecrets") -> argparse.ArgumentParser:
    """The whole CLI; ``prog`` names it in usage lines (``airflow mlsecrets`` under Airflow)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser must not reset a --json given before it
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    parser = argparse.ArgumentParser(
        prog=prog, parents=[common],
        description="HSM-backed secrets for ML pipelines on Airflow. Configuration comes from "
                    "MLSECRETS_* variables (see docs/configuration.md).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (_admin, _secrets, _rotation, _principals, _break_glass, _audit, _review,
                   _alerts,
                   _backup, _airflow, _serve, _doctor):
        module.register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "mlsecrets") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    context = Context(output=Output(as_json=getattr(args, "json", False)))
    try:
        code = args.handler(args, context)
    except MLSecretsError as exc:
        context.output.warn(f"mlsecrets: error: {exc}")
        return exc.exit_code
    except BrokenPipeError:
        # the reader went away (``| head``): not an error worth a message
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        context.output.warn("mlsecrets: interrupted; nothing half-written is kept")
        return 130
    except Exception as exc:
        if os.environ.get("MLSECRETS_DEBUG", "").lower() in ("1", "true", "yes"):
            raise
        context.output.warn(f"mlsecrets: internal error ({type(exc).__name__}); run again with "
                            "MLSECRETS_DEBUG=1 for the traceback and report it")
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
