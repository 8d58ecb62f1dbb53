"""``airflow mlsecrets …``: the ``mlsecrets`` CLI as an Airflow CLI group.

Registered through ``get_provider_info()["cli"]``. It passes its arguments to the very same
parser and handlers as the ``mlsecrets`` command, so the two never drift apart.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def run(args: argparse.Namespace) -> None:
    from airflow_provider_mlsecrets.cli.main import main

    code = main(args.mlsecrets_args or ["--help"])
    if code:
        sys.exit(code)


def get_cli_commands() -> list[Any]:
    from airflow.cli.cli_config import ActionCommand, Arg

    rest = Arg(  # type: ignore[no-untyped-call]
        ("mlsecrets_args",), nargs=argparse.REMAINDER, metavar="COMMAND ...",
        help="an mlsecrets command, e.g. 'status' or 'secret list'")
    return [ActionCommand(
        name="mlsecrets",
        help="The mlsecrets vault: secrets, principals, grants, audit (same as 'mlsecrets')",
        func=run, args=(rest,))]
