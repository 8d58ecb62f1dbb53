"""Output for people (tables on a terminal) and for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from airflow_provider_mlsecrets.plain import plain

PIPE_WIDTH = 200  # tables piped to a file or a pager are not cut to 80 columns


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=True)
        if not self.out.is_terminal:
            self.out = Console(highlight=False, soft_wrap=True, width=PIPE_WIDTH)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def data(self, value: Any) -> None:
        print(json.dumps(plain(value), indent=2, sort_keys=False))

    def message(self, text: str, data: Any = None) -> None:
        """A sentence for people; with ``--json``, ``data`` (or ``{"message": text}``)."""
        if self.as_json:
            self.data(data if data is not None else {"message": text})
        else:
            self.out.print(text, markup=False)

    def table(self, rows: Sequence[Any], columns: Sequence[str], *, title: str | None = None,
              empty: str = "nothing to show") -> None:
        if self.as_json:
            self.data(list(rows))
            return
        if not rows:
            self.out.print(empty, markup=False)
            return
        table = Table(title=title, header_style="bold")
        for column in columns:
            table.add_column(column.replace("_", " "))
        for row in rows:
            table.add_row(*(_cell(row[c] if isinstance(row, dict) else getattr(row, c))
                            for c in columns))
        self.out.print(table)

    def fields(self, values: dict[str, Any]) -> None:
        if self.as_json:
            self.data(values)
            return
        width = max(len(k) for k in values)
        for key, value in values.items():
            self.out.print(f"{key.replace('_', ' '):<{width}}  {_cell(value)}", markup=False)

    def warn(self, text: str) -> None:
        self.err.print(text, markup=False)

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar on stderr for long work (silent when stderr is not a terminal)."""
        bar = Progress("[progress.description]{task.description}", BarColumn(),
                       MofNCompleteColumn(), TimeRemainingColumn(), console=self.err,
                       transient=True, disable=not self.err.is_terminal)
        with bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)


def write_lines(lines: Iterable[str]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")
