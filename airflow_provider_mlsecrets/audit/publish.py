"""Checkpoints kept away from the database: written to, and read back from, a local path or
any object-storage URL Airflow's ``ObjectStoragePath`` understands (``file://``, ``s3://``,
``gs://``, ``memory://`` …). The bytes are :meth:`Checkpoint.to_json`'s, unchanged.

A checkpoint is worth something only while nobody can swap it, so nothing here replaces
one: a name that exists is refused (an older checkpoint written over a newer one would hide
the records cut since). A local file is created 0600 under a temporary name, synced, then
hard-linked into place, which fails if the name exists: it appears whole or not at all, and
no symlink planted at the name is followed. Object stores offer no such primitive everywhere:
the name is checked, then written with fsspec's ``mode="create"`` (a conditional put where
the backend has one).

Which filesystem serves a URL: Airflow's registry first (the schemes its providers register,
and ``scheme://CONN_ID@…`` URLs, which authenticate through that Airflow connection), else
fsspec's own (``memory://``; ``s3fs`` or ``gcsfs`` installed without a provider).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_mlsecrets.audit.checkpoint import Checkpoint
from airflow_provider_mlsecrets.errors import ConfigurationError, InvalidInput, MLSecretsError

MAX_BYTES = 1 << 20  # a checkpoint is a few hundred bytes per chain
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_LOCAL_SCHEMES = ("file", "local")
_AZURE = "apache-airflow-providers-microsoft-azure"
_PROVIDERS = {"s3": "apache-airflow-providers-amazon[s3fs]",
              "s3a": "apache-airflow-providers-amazon[s3fs]",
              "gs": "apache-airflow-providers-google", "gcs": "apache-airflow-providers-google",
              "abfs": _AZURE, "abfss": _AZURE, "adl": _AZURE}


class CheckpointStoreError(MLSecretsError):
    """The checkpoint's store could not be reached or written; the message says what to
    check. (A mistake in the name itself is :class:`InvalidInput`.)"""


@dataclass(frozen=True)
class Destination:
    """Where one checkpoint goes. Made by :func:`destination` or :func:`in_folder`, which
    refuse an unusable URL or a name that exists before any checkpoint is taken."""

    display: str  # the location as given, with any password in it masked
    local: Path | None = None
    fs: Any = None  # an fsspec filesystem, for everything that is not local
    path: str = ""

    def write(self, point: Checkpoint) -> None:
        data = point.to_json().encode()
        if self.local is not None:
            _write_local(self.local, data, self.display)
        else:
            _write_remote(self.fs, self.path, data, self.display)


def destination(where: str | Path) -> Destination:
    """The checkpoint file ``where`` names: a local path or an object-storage URL."""
    text = os.fspath(where)
    if not _URL.match(text):
        return _local(Path(text), text)
    return _resolve(_object_path(text), _display(text))


def in_folder(folder: str | Path, now: datetime | None = None) -> Destination:
    """``checkpoint-<UTC time>.json`` in ``folder`` (a path or a folder URL)."""
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    name = moment.strftime("checkpoint-%Y%m%dT%H%M%S.%fZ.json")
    text = os.fspath(folder)
    if not _URL.match(text):
        return _local(Path(text) / name, str(Path(text) / name))
    shown = _display(text)
    return _resolve(_object_path(text) / name, shown + ("" if shown.endswith("/") else "/")
                    + name)


def write_checkpoint(point: Checkpoint, where: str | Path) -> str:
    """Write ``point`` to ``where``; returns the location written, for messages."""
    out = destination(where)
    out.write(point)
    return out.display


def read_checkpoint(where: str | Path) -> Checkpoint:
    """A checkpoint from a local path or an object-storage URL; any failure to read it is
    :class:`InvalidInput`, as for a local file."""
    text = os.fspath(where)
    if not _URL.match(text):
        return Checkpoint.read(Path(text))
    target, shown = _object_path(text), _display(text)
    if target.protocol in _LOCAL_SCHEMES:
        return Checkpoint.read(Path(target.path))
    fs = _filesystem(target, shown)
    try:
        with fs.open(target.path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise InvalidInput(f"cannot read checkpoint {shown}: it does not exist") from None
    except Exception as exc:  # any backend's failure, named; nothing secret is involved
        raise InvalidInput(f"cannot read checkpoint {shown}: {type(exc).__name__}: {exc}"
                           ) from exc
    if len(data) > MAX_BYTES:
        raise InvalidInput(f"{shown} is not an audit checkpoint: larger than {MAX_BYTES} bytes")
    try:
        return Checkpoint.from_json(data.decode("utf-8"), shown)
    except UnicodeDecodeError:
        raise InvalidInput(f"{shown} is not an audit checkpoint: not UTF-8") from None


# -- resolving -------------------------------------------------------------------------
def _object_path(url: str) -> Any:
    try:
        from airflow.sdk import ObjectStoragePath
    except ImportError as exc:
        raise ConfigurationError("object-storage URLs need Airflow 3's task SDK "
                                 "(airflow.sdk): install apache-airflow>=3, or give a local "
                                 "path") from exc
    try:
        return ObjectStoragePath(url)
    except ValueError:  # universal_pathlib: "Unsupported filesystem: 'x'"
        scheme = url.split("://", 1)[0]
        raise InvalidInput(
            f"{_display(url)}: no filesystem serves {scheme}://; give a local path, a "
            "file:// URL, or a scheme an installed Airflow provider or fsspec package serves "
            "(s3://, gs://, abfs://, …)") from None


def _resolve(target: Any, shown: str) -> Destination:
    if target.protocol in _LOCAL_SCHEMES:
        return _local(Path(target.path), shown)
    fs = _filesystem(target, shown)
    try:
        exists = fs.exists(target.path)
    except Exception as exc:  # any backend's failure, named and chained
        raise _store_error(shown, exc) from exc
    if exists:
        raise _exists(shown)
    return Destination(display=shown, fs=fs, path=target.path)


def _filesystem(target: Any, shown: str) -> Any:
    from airflow.sdk.io import has_fs

    scheme: str = target.protocol
    hint = _PROVIDERS.get(scheme, f"the Airflow provider or fsspec package that serves "
                                  f"{scheme}://")
    try:
        if target.conn_id or has_fs(scheme):
            return target.fs  # Airflow's: the provider's filesystem, the URL's connection
        import fsspec  # type: ignore[import-untyped]

        return fsspec.filesystem(scheme, **target.storage_options)
    except ImportError as exc:  # fsspec: "Install s3fs to access S3"
        raise ConfigurationError(f"no filesystem for {scheme}:// is installed ({exc}): "
                                 f"install {hint}, then run again") from None
    except ValueError as exc:  # Airflow: "No filesystem registered for scheme s3"
        raise ConfigurationError(f"{shown}: {exc}; install {hint} so Airflow can reach it "
                                 "through the connection named in the URL") from None
    except Exception as exc:  # e.g. the URL's connection does not exist
        raise ConfigurationError(f"cannot open the store of {shown}: {type(exc).__name__}: "
                                 f"{exc}; check the Airflow connection the URL names") from exc


def _local(path: Path, shown: str) -> Destination:
    if os.path.lexists(path):
        raise _exists(shown)
    return Destination(display=shown, local=path)


def _display(url: str) -> str:
    """The URL for messages and logs, with a password in it (``user:pw@``) masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


# -- writing ---------------------------------------------------------------------------
def _write_local(path: Path, data: bytes, shown: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkstemp: a fresh, unguessable name, created O_EXCL, private from the first byte
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                        suffix=".tmp")
    except OSError as exc:
        raise _store_error(shown, exc) from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)  # atomic, and never replaces: EEXIST if the name exists
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except FileExistsError:
        raise _exists(shown) from None
    except OSError as exc:
        raise _store_error(shown, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _write_remote(fs: Any, path: str, data: bytes, shown: str) -> None:
    try:
        if fs.exists(path):
            raise _exists(shown)
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        raise _exists(shown) from None
    except MLSecretsError:
        raise
    except Exception as exc:  # any backend's failure, named and chained
        raise _store_error(shown, exc) from exc


def _exists(shown: str) -> InvalidInput:
    return InvalidInput(f"{shown} already exists: a checkpoint is never written over another "
                        "(an older one over a newer one would hide records cut since); give "
                        "a new name")


def _store_error(shown: str, exc: BaseException) -> CheckpointStoreError:
    reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror
              else f"{type(exc).__name__}: {exc}")
    return CheckpointStoreError(
        f"cannot write checkpoint {shown}: {reason}; check that the folder exists (or can be "
        "created) and that this process may write there, then run again")
