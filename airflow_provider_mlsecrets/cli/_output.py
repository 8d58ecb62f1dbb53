"""Output for people (tables on a terminal) and for scripts (``--json``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from airflow_provider_mlsecrets._files import private_file
from airflow_provider_mlsecrets.errors import InvalidInput
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


@contextmanager
def credential_file(path: Path, *, force: bool = False) -> Iterator[TextIO]:
    """A file for a credential, mode 0600 from its first byte, opened *before* the credential
    exists so that a name that is taken fails first, not after a token was made and lost.

    Without ``force`` it is created ``O_EXCL | O_NOFOLLOW``: an existing file (or a planted
    symlink) is refused. With ``force`` an existing file is replaced atomically. If the block
    fails, nothing is left behind."""
    if force:
        with private_file(path) as handle:
            yield handle
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise InvalidInput(f"{path} already exists; give --force to replace it, or another "
                           "file") from None
    except OSError as exc:
        raise InvalidInput(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
