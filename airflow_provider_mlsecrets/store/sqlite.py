"""SQLite connections that queue for the write lock instead of polling for it.

Every transaction here writes (an operation writes at least its audit record), so each one
takes SQLite's write lock up front with ``BEGIN IMMEDIATE``. SQLite's ``busy_timeout`` does
not queue the writers it makes wait: each one sleeps and retries, up to 100 ms apart, while
a writer that has just committed takes the lock again a millisecond later. Under steady load
a waiter can miss every free moment until its timeout, and an ordinary lookup fails with
"database is locked" while the others go on (``benchmarks/concurrency.py``, eight processes
without the queue: the slowest lookup waited 1.6 s of a 5 s run; about 0.1 s with it).

So before ``BEGIN IMMEDIATE`` a connection takes an exclusive ``flock`` on ``<db>-lock``, a
file beside the database (with its mode and owner, as ``-wal`` and ``-shm``), and keeps it
until its transaction ends. Waiters sleep in the kernel and are woken the moment it is
released, so a release usually goes to a waiter rather than back to the writer that just
held it (``tests/test_concurrency.py``: a waiter behind a writer that begins again at once
got in after 200 of 200 of its writes before, within a few now). The lock only orders
writers: SQLite's own lock still guards the data, and anything that writes without this
queue (the ``sqlite3`` shell, another program) is still waited for by ``busy_timeout``. A
lock file is per host, as SQLite is.

The kernel wakes every waiter at a release and the first to run takes the lock, so the
queue is fair in practice, not by construction: on a loaded host a waiter can still lose
many turns. So a waiter gives up ("database is locked") only after 30 s in which no other
writer committed (``PRAGMA data_version`` did not change): a busy database is waited for,
only a stuck one fails (seen in CI: a lookup gave up after 30 s behind seven processes that
were committing all along).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc as sa_exc

BUSY_TIMEOUT_MS = 30_000  # how long a writer waits with no other writer committing
_LOOK = 1.0  # seconds between two looks, while waiting, at whether other writers commit


class WriterQueue:
    """One connection's place in the queue of writers to one database file."""

    def __init__(self, database: str) -> None:
        self.path = f"{database}-lock"
        self._pid = os.getpid()
        self._fd = self._open()
        self._held = False

    def _open(self) -> int:
        """Open the lock file, created as SQLite creates ``-wal`` and ``-shm``: with the
        database file's mode and, when root creates it, its owner, so that whoever may
        write the database may queue for it."""
        database = self.path.removesuffix("-lock")
        try:
            owner = os.stat(database)
        except FileNotFoundError:
            owner = None
        mode = owner.st_mode & 0o666 if owner else 0o600
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
        if owner and os.geteuid() == 0 and os.fstat(fd).st_uid != owner.st_uid:
            os.fchown(fd, owner.st_uid, owner.st_gid)
        return fd

    def acquire(self, timeout: float, progress: Callable[[], object] | None = None) -> None:
        """Take the lock. Give up ("database is locked", as SQLite says it, so the store
        reports it as it reports SQLite's own) only once ``timeout`` seconds have passed
        with no change in ``progress()`` (a value that changes whenever another writer
        commits): a busy queue is waited for, a stuck one is not."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._wait(timeout, progress)
        self._held = True

    def _wait(self, timeout: float, progress: Callable[[], object] | None) -> None:
        """Wait in the kernel on a helper thread, since a blocking ``flock`` takes no
        timeout. A waiter given up on closes its descriptor once it has the lock (which
        releases it), and this connection queues on a fresh descriptor next time."""
        waiter = _Waiter(self._fd)
        threading.Thread(target=waiter.run, name="mlsecrets-sqlite-queue", daemon=True).start()
        seen = progress() if progress is not None else None
        deadline = time.monotonic() + timeout
        while not waiter.granted.wait(max(0.0, min(_LOOK, deadline - time.monotonic()))):
            if progress is not None and (now := progress()) != seen:
                seen, deadline = now, time.monotonic() + timeout  # busy, not stuck
            elif time.monotonic() >= deadline:
                if waiter.give_up():
                    self._fd = self._open()
                    raise sqlite3.OperationalError(
                        f"database is locked (no other writer committed for {timeout:.0f} s)")
                break  # granted just now
        if waiter.error is not None:
            raise sqlite3.OperationalError(f"cannot lock {self.path}: {waiter.error}")

    def release(self) -> None:
        # a forked child shares its parent's open file description, and with it the
        # parent's lock: only the process that took the lock lets it go
        if self._held and os.getpid() == self._pid:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._held = False

    def close(self) -> None:
        self.release()
        os.close(self._fd)


class _Waiter:
    """A blocking ``flock`` on its own thread, which its owner may stop waiting for."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.granted = threading.Event()
        self.error: OSError | None = None
        self._guard = threading.Lock()
        self._abandoned = False

    def run(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError as exc:
            self.error = exc
        with self._guard:
            if self._abandoned:
                os.close(self.fd)
            else:
                self.granted.set()

    def give_up(self) -> bool:
        """Stop waiting; ``False`` if the lock was granted just now (then it is ours)."""
        with self._guard:
            if self.granted.is_set():
                return False
            self._abandoned = True
            return True


class QueuedConnection(sqlite3.Connection):
    """A ``sqlite3`` connection whose transactions queue in a :class:`WriterQueue`
    (none for an in-memory database or a ``file:`` URI)."""

    def __init__(self, database: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        name = os.fsdecode(database)
        self.queue = (None if name in ("", ":memory:") or name.startswith("file:")
                      else WriterQueue(name))

    def begin_immediate(self) -> None:
        if self.queue is not None:
            self.queue.acquire(BUSY_TIMEOUT_MS / 1000, self._data_version)
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release()
            raise

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.queue is not None:
                self.queue.close()

    def _data_version(self) -> int:
        """Changes whenever another connection commits (read with no lock held)."""
        return int(self.execute("PRAGMA data_version").fetchone()[0])

    def _release(self) -> None:
        if self.queue is not None:
            self.queue.release()


def configure(dbapi_connection: Any, _record: Any) -> None:
    """The pragmas of every connection (docs/configuration.md says why each)."""
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA secure_delete = ON")  # destroyed versions leave no bytes behind
    cursor.close()


def begin(connection: Any) -> None:
    """SQLAlchemy's ``begin`` event: queue, then take SQLite's write lock. SQLAlchemy does
    not wrap what an event raises, so a failure is wrapped here as its own would be (the
    store then reports it like any database failure, nothing changed)."""
    try:
        connection.connection.dbapi_connection.begin_immediate()
    except sqlite3.Error as exc:
        raise sa_exc.OperationalError("BEGIN IMMEDIATE", None, exc) from None
