"""Modes of the files that hold the vault's keys to the kingdom (its home, token and PIN
files, SoftHSM2's token directory, a SQLite database) and of Airflow's task logs, which
carry task instance ids (a forged token needs one)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from airflow_provider_mlsecrets.doctor._deployment import Deployment
from airflow_provider_mlsecrets.doctor._finding import Finding, describe_mode, mode_of
from airflow_provider_mlsecrets.errors import MLSecretsError
from airflow_provider_mlsecrets.settings import Settings

OURS = "airflow_provider_mlsecrets"


def _settings(d: Deployment) -> Settings | None:
    overrides: dict[str, str | None] = {}
    if (d.conf("secrets", "backend") or "").startswith(OURS):
        try:
            kwargs = json.loads(d.conf("secrets", "backend_kwargs") or "{}")
            overrides = {k: str(v) for k, v in kwargs.items() if v} if isinstance(
                kwargs, dict) else {}
        except ValueError:
            overrides = {}
    for environ in (d.environ, {k: v for k, v in d.environ.items() if k != "MLSECRETS_URL"}):
        try:  # a URL the settings refuse (plain HTTP) is the transport check's finding
            return Settings.load(environ, overrides)
        except MLSecretsError:
            continue
    return None


def _private(check: str, what: str, path: Path | None) -> list[Finding]:
    """A file or directory no one but its owner may read."""
    if path is None:
        return []
    mode = mode_of(path)
    if mode is None:
        return []
    where = describe_mode(path, mode)
    if mode & 0o077:
        return [Finding(check, "hazard", f"{what} {where} is open to other users",
                        f"chmod {'700' if path.is_dir() else '600'} {path}, owned by the API "
                        "server's user")]
    return [Finding(check, "ok", f"{what} {where}")]


def check(d: Deployment) -> list[Finding]:
    out: list[Finding] = []
    settings = _settings(d)
    if settings is not None:
        out += _private("files.vault-home", "the vault home", settings.home)
        out += _private("files.token", "the principal token file", settings.token_file)
        out += _private("files.pin", "the HSM PIN file", settings.pkcs11_pin_file)
        out += _private("files.softhsm-tokens", "SoftHSM2's token directory",
                        _tokendir(settings.softhsm2_conf))
        out += _database(settings.db_url)
    out += _logs(d)
    return out


def _tokendir(conf: Path | None) -> Path | None:
    try:
        text = conf.read_text(encoding="utf-8") if conf else ""
    except OSError:
        return None
    found = re.search(r"^\s*directories\.tokendir\s*=\s*(\S+)", text, re.MULTILINE)
    return Path(found.group(1)) if found else None


def _database(url: str) -> list[Finding]:
    if not url.startswith("sqlite:///"):
        return []
    path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    mode = mode_of(path)
    if mode is None:
        return []
    where = describe_mode(path, mode)
    if mode & 0o022:
        return [Finding("files.database", "hazard", f"the vault's SQLite database {where} is "
                        "writable by other users", f"chmod 600 {path}")]
    if mode & 0o044:
        return [Finding("files.database", "warning", f"the vault's SQLite database {where} is "
                        "readable by other users (ciphertext, but also paths, principals and "
                        "the audit trail)", f"chmod 600 {path}")]
    return [Finding("files.database", "ok", f"the vault's SQLite database {where}")]


def _logs(d: Deployment) -> list[Finding]:
    folder = d.conf("logging", "base_log_folder")
    if not folder:
        return []
    path = Path(folder)
    mode = mode_of(path)
    if mode is None:
        return []
    where = describe_mode(path, mode)
    if mode & 0o002:
        return [Finding("files.task-logs", "hazard", f"the task-log folder {where} is "
                        "writable by every user", f"chmod o-w {path}")]
    if mode & 0o004:
        return [Finding("files.task-logs", "warning", f"the task-log folder {where} is readable "
                        "by every user: logs name task instance ids and hold whatever tasks "
                        "print", f"chmod o-rwx {path}; give each pool's logs their own folder "
                        "or remote logging")]
    return [Finding("files.task-logs", "ok", f"the task-log folder {where}")]
