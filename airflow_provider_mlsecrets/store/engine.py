"""Database engines, created lazily, one per URL per process.

SQLite connections are set up by ``store/sqlite.py``: WAL mode with ``synchronous=FULL``,
and writers queued for the write lock that every transaction takes up front.
"""

from __future__ import annotations

import importlib.util
import os
import threading

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import QueuePool

from airflow_provider_mlsecrets.errors import ConfigurationError
from airflow_provider_mlsecrets.store import sqlite

_ENGINES: dict[tuple[int, str], Engine] = {}
_LOCK = threading.Lock()


def _reset_lock_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()


def _close_idle_sqlite_before_fork() -> None:
    """SQLite must not be carried across ``fork``: a child inherits an open connection's
    file descriptors and SQLite's per-process lock bookkeeping for the file, which its own
    connections then share. Close this process's idle SQLite connections first (reopened
    on next use); one in use by another thread at this moment stays, as it must."""
    pid = os.getpid()
    for (owner, _), engine in list(_ENGINES.items()):
        if owner == pid and engine.dialect.name == "sqlite":
            engine.pool.dispose()


os.register_at_fork(before=_close_idle_sqlite_before_fork,
                    after_in_child=_reset_lock_in_child)


def engine_for(url: str) -> Engine:
    """The engine for ``url`` in this process (a forked child gets its own)."""
    pid = os.getpid()
    key = (pid, url)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            for inherited in [k for k in _ENGINES if k[0] != pid]:
                # A parent's pooled connections belong to the parent: forget them without
                # closing, or the child would hang up the parent's sockets.
                _ENGINES.pop(inherited).dispose(close=False)
            engine = _ENGINES[key] = _create(url)
        return engine


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _create(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            "MLSECRETS_DB_URL is not a SQLAlchemy URL (e.g. sqlite:////var/lib/mlsecrets/vault.db "
            "or postgresql+psycopg://user@host/db)"
        ) from None
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is not None:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_private_file(parsed.database)
        # a small pool: opening a connection costs its PRAGMAs, and closing the last one
        # checkpoints the WAL, each time; pooled connections are per process (see
        # engine_for), and SQLite serialises writers anyway
        engine = create_engine(parsed, poolclass=QueuePool, pool_size=4, max_overflow=8,
                               connect_args={"check_same_thread": False,
                                             "factory": sqlite.QueuedConnection})
        event.listen(engine, "connect", sqlite.configure)
        event.listen(engine, "begin", sqlite.begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _create_private_file(path: str) -> None:
    """Create the database file 0600 before SQLite does (its WAL and SHM files inherit
    the mode): ciphertext is still nobody else's business."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
