"""``airflow mlsecrets …``: the ``mlsecrets`` CLI as an Airflow CLI group.

Registered through ``get_provider_info()["cli"]``. It passes its arguments to the very same
parser and handlers as the ``mlsecrets`` command, so the two never drift apart. Airflow builds
one argparse sub-parser per command and would answer ``-h`` with a stub that lists no
commands, so this command's help is the mlsecrets parser's, named ``airflow mlsecrets``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from airflow.cli.cli_config import ActionCommand, Arg

PROG = "airflow mlsecrets"


def _help() -> str:
    """``airflow mlsecrets -h``: the mlsecrets parser's own help, which lists its commands."""
    from airflow_provider_mlsecrets.cli.main import build_parser

    return build_parser(PROG).format_help()


class _CommandLine(Arg):
    """The rest of the command line, for the mlsecrets parser; ``-h`` shows its commands."""

    def __init__(self) -> None:
        super().__init__(("mlsecrets_args",))  # type: ignore[no-untyped-call]

    def add_to_parser(self, parser: argparse.ArgumentParser) -> None:
        # Airflow's -h prints this sub-parser's help (through format_help), which knows
        # nothing of the mlsecrets commands: print the mlsecrets parser's instead
        parser.format_help = _help  # type: ignore[method-assign]
        parser.add_argument("--json", action="store_true", dest="mlsecrets_json",
                            help="machine-readable output")
        parser.add_argument("mlsecrets_args", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                            help="an mlsecrets command, e.g. 'status' or 'secret list'")


def _logs_to_stderr() -> None:
    """Airflow's console log handler writes to stdout; an mlsecrets command's stdout is its
    output (``--json`` included), so its log lines (the vault's migrations, for one) go to
    stderr, as Airflow does for its own ``-o json`` commands."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def run(args: argparse.Namespace) -> None:
    from airflow_provider_mlsecrets.cli.main import main

    _logs_to_stderr()
    argv = ["--json"] if getattr(args, "mlsecrets_json", False) else []
    code = main([*argv, *(args.mlsecrets_args or ["--help"])], prog=PROG)
    if code:
        sys.exit(code)


def get_cli_commands() -> list[Any]:
    return [ActionCommand(
        name="mlsecrets",
        help="The mlsecrets vault: secrets, principals, grants, audit (same as 'mlsecrets')",
        func=run, args=(_CommandLine(),))]
