"""Writing files that hold tokens, PINs or trail checkpoints: atomically, private from the
first byte (created 0600, then renamed into place), so a crash leaves the old file or the
new one and never a half-written or world-readable one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def write_private(path: Path, text: str, *, mode: int = 0o600) -> None:
    with private_file(path, mode=mode) as handle:
        handle.write(text)


@contextmanager
def private_file(path: Path, *, mode: int = 0o600) -> Iterator[TextIO]:
    """A text file to write that replaces ``path`` only if the block finishes."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkstemp: a fresh, unguessable name created O_EXCL (no symlink or planted file is
    # followed or reused); the mode is set on the descriptor before a byte is written
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
