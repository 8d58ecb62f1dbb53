"""``mlsecrets doctor``: the deployment's trust domains and hazards, with fixes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from rich.markup import escape

from airflow_provider_mlsecrets.cli._output import Output


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    doctor = commands.add_parser(
        "doctor", parents=[common],
        help="check the deployment: which DAGs trust each other, keys and credentials "
             "within tasks' reach, file modes, plain HTTP (exit 6 on a hazard)",
        description="Run on the Airflow API server's host. Reads Airflow's configuration, "
                    "this environment and, if reachable, the metadata database's DAGs. "
                    "Exit 0: no hazard; 6: at least one hazard.")
    doctor.add_argument("--no-dags", action="store_true",
                        help="do not read the metadata database (configuration only)")
    doctor.set_defaults(handler=run)


def run(args: argparse.Namespace, context: Any) -> int:
    from airflow_provider_mlsecrets.doctor import EXIT_HAZARD, findings

    with _stdout_to_stderr():  # Airflow's own log lines must not mix with the report
        found = findings(read_dags=not args.no_dags)
    hazards = sum(f.severity == "hazard" for f in found)
    warnings = sum(f.severity == "warning" for f in found)
    output: Output = context.output
    if output.as_json:
        output.data({"hazards": hazards, "warnings": warnings,
                     "findings": [asdict(f) for f in found]})
    else:
        # cells are plain text: "[api_auth]" is not rich markup
        output.table([{k: escape(v) for k, v in asdict(f).items()} for f in found],
                     ["severity", "check", "finding", "fix"], title="mlsecrets doctor")
        output.message(f"{hazards} hazard(s), {warnings} warning(s)"
                       + ("; between DAGs in one trust domain, a hostile DAG can reach the "
                          "others' secrets" if hazards else ""))
    return EXIT_HAZARD if hazards else 0


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send whatever is written to file descriptor 1 meanwhile to standard error, so that
    standard output holds the report alone (``--json`` stays parseable)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
