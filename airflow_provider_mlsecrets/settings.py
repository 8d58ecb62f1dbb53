"""Settings: one frozen, validated object built in one place.

Every surface (CLI, secrets backend, hook, operator, DAG) builds its settings with
:meth:`Settings.load`, which reads the ``MLSECRETS_*`` environment and, beneath it, the
optional ``$MLSECRETS_HOME/config.json`` (same keys as the environment; ``init --dev``
writes it). The environment wins. PINs and tokens are read from their files only when
needed and never appear in ``repr``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path

from airflow_provider_mlsecrets.durations import parse_duration
from airflow_provider_mlsecrets.errors import ConfigurationError, InvalidInput

CONFIG_FILE = "config.json"
DEFAULT_TOKEN_LABEL = "mlsecrets"  # noqa: S105 - the HSM token's label # nosec B105
DEFAULT_KEY_PREFIX = "mlsecrets"
DEFAULT_MAX_VALUE_BYTES = 64 * 1024
DEFAULT_MAX_VERSIONS = 10
DEFAULT_ROTATION_LEASE = 900
DEFAULT_DATA_KEY_CACHE_TTL = 60
DEFAULT_DATA_KEY_CACHE_USES = 1000
DEFAULT_AUDIT_MARK_INTERVAL = 60
DEFAULT_AUDIT_MIN_RETENTION = "30d"
DEFAULT_ALERT_INTERVAL = 30
DEFAULT_BREAK_GLASS_MAX_WINDOW = "1h"
DEFAULT_BREAK_GLASS_REQUEST_TTL = "24h"
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")

# setting name -> environment variable (and config.json key)
ENVIRONMENT = {
    "home": "MLSECRETS_HOME",
    "db_url": "MLSECRETS_DB_URL",
    "pkcs11_module": "MLSECRETS_PKCS11_MODULE",
    "pkcs11_token": "MLSECRETS_PKCS11_TOKEN",  # variable names, not values # nosec B105
    "pkcs11_pin": "MLSECRETS_PKCS11_PIN",
    "pkcs11_pin_file": "MLSECRETS_PKCS11_PIN_FILE",
    "softhsm2_conf": "MLSECRETS_SOFTHSM2_CONF",
    "key_prefix": "MLSECRETS_KEY_PREFIX",
    "max_value_bytes": "MLSECRETS_MAX_VALUE_BYTES",
    "max_versions": "MLSECRETS_MAX_VERSIONS",
    "rotation_lease": "MLSECRETS_ROTATION_LEASE",
    "data_key_cache_ttl": "MLSECRETS_DATA_KEY_CACHE_TTL",
    "data_key_cache_uses": "MLSECRETS_DATA_KEY_CACHE_USES",
    "token": "MLSECRETS_TOKEN",  # nosec B105
    "token_file": "MLSECRETS_TOKEN_FILE",  # nosec B105
    "url": "MLSECRETS_URL",
    "ca_file": "MLSECRETS_CA_FILE",
    "trusted_proxies": "MLSECRETS_TRUSTED_PROXIES",
    "audit_mark_interval": "MLSECRETS_AUDIT_MARK_INTERVAL",
    "audit_min_retention": "MLSECRETS_AUDIT_MIN_RETENTION",
    "audit_checkpoint_url": "MLSECRETS_AUDIT_CHECKPOINT_URL",
    "alert_rules": "MLSECRETS_ALERT_RULES",
    "alert_interval": "MLSECRETS_ALERT_INTERVAL",
    "break_glass_max_window": "MLSECRETS_BREAK_GLASS_MAX_WINDOW",
    "break_glass_request_ttl": "MLSECRETS_BREAK_GLASS_REQUEST_TTL",
}


@dataclass(frozen=True)
class Settings:
    """Where the vault lives and how to reach its HSM. See ``docs/configuration.md``."""

    home: Path
    db_url: str
    pkcs11_module: str | None = None
    pkcs11_token: str = DEFAULT_TOKEN_LABEL
    pkcs11_pin: str | None = field(default=None, repr=False)
    pkcs11_pin_file: Path | None = None
    softhsm2_conf: Path | None = None
    key_prefix: str = DEFAULT_KEY_PREFIX
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_versions: int = DEFAULT_MAX_VERSIONS
    rotation_lease: int = DEFAULT_ROTATION_LEASE
    data_key_cache_ttl: int = DEFAULT_DATA_KEY_CACHE_TTL
    data_key_cache_uses: int = DEFAULT_DATA_KEY_CACHE_USES
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    url: str | None = None
    ca_file: Path | None = None
    # addresses (or networks) of proxies whose X-Forwarded-For / Forwarded is believed
    trusted_proxies: tuple[str, ...] = ()
    audit_mark_interval: int = DEFAULT_AUDIT_MARK_INTERVAL
    audit_min_retention: str = DEFAULT_AUDIT_MIN_RETENTION
    audit_checkpoint_url: str | None = None
    # the alert rules and notifiers (docs/alerts.md), and how often the vault process
    # evaluates them at the least (0: only when asked, by the maintenance DAG or the CLI)
    alert_rules: Path | None = None
    alert_interval: int = DEFAULT_ALERT_INTERVAL
    # how long an approved break-glass read may stay open, and a request await approval
    break_glass_max_window: str = DEFAULT_BREAK_GLASS_MAX_WINDOW
    break_glass_request_ttl: str = DEFAULT_BREAK_GLASS_REQUEST_TTL

    def __post_init__(self) -> None:
        if not self.db_url:
            raise ConfigurationError("MLSECRETS_DB_URL is empty; give a SQLAlchemy URL")
        if not _LABEL.fullmatch(self.pkcs11_token):
            raise ConfigurationError(f"MLSECRETS_PKCS11_TOKEN {self.pkcs11_token!r} is not a label")
        if not _LABEL.fullmatch(self.key_prefix):
            raise ConfigurationError(f"MLSECRETS_KEY_PREFIX {self.key_prefix!r} is not a label")
        if not 1 <= self.max_value_bytes <= 16 * 1024 * 1024:
            raise ConfigurationError("MLSECRETS_MAX_VALUE_BYTES must be between 1 and 16777216")
        if not 1 <= self.max_versions <= 10_000:
            raise ConfigurationError("MLSECRETS_MAX_VERSIONS must be between 1 and 10000")
        if self.url is not None and not (self.url.startswith("https://") or _loopback_http(
                self.url)):
            raise ConfigurationError(
                f"MLSECRETS_URL {self.url!r} must start with https:// (plain http:// only to "
                "127.0.0.1, ::1 or localhost): tokens and values must not cross a network "
                "in clear text")
        if not 1 <= self.rotation_lease <= 86_400:
            raise ConfigurationError("MLSECRETS_ROTATION_LEASE must be between 1 and 86400 "
                                     "seconds")
        if not 0 <= self.data_key_cache_ttl <= 3600:
            raise ConfigurationError("MLSECRETS_DATA_KEY_CACHE_TTL must be between 0 (off) and "
                                     "3600 seconds")
        if not 1 <= self.data_key_cache_uses <= 1_000_000:
            raise ConfigurationError("MLSECRETS_DATA_KEY_CACHE_USES must be between 1 and "
                                     "1000000")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigurationError(
                    f"MLSECRETS_TRUSTED_PROXIES: {proxy!r} is not an IP address or network "
                    "(give a comma-separated list such as 10.0.0.5,10.1.0.0/16)") from None
        if not 0 <= self.audit_mark_interval <= 86_400:
            raise ConfigurationError("MLSECRETS_AUDIT_MARK_INTERVAL must be between 0 (after "
                                     "every append) and 86400 seconds")
        if not 0 <= self.alert_interval <= 86_400:
            raise ConfigurationError("MLSECRETS_ALERT_INTERVAL must be between 0 (no background "
                                     "evaluation) and 86400 seconds")
        try:
            self.min_audit_retention()
        except InvalidInput as exc:
            raise ConfigurationError(f"MLSECRETS_AUDIT_MIN_RETENTION: {exc}") from None
        for name in ("break_glass_max_window", "break_glass_request_ttl"):
            try:
                parse_duration(getattr(self, name))
            except InvalidInput as exc:
                raise ConfigurationError(f"{ENVIRONMENT[name]}: {exc}") from None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None,
             overrides: Mapping[str, str | None] | None = None) -> Settings:
        """Build the settings from ``overrides`` (setting names, e.g. a secrets backend's
        ``backend_kwargs``) over the environment over ``$MLSECRETS_HOME/config.json``."""
        env = os.environ if environ is None else environ
        given = {ENVIRONMENT[_setting_name(k)]: v for k, v in (overrides or {}).items() if v}
        home = Path(given.get("MLSECRETS_HOME") or env.get("MLSECRETS_HOME")
                    or Path.home() / ".mlsecrets").expanduser()
        # an empty variable counts as unset, so it cannot hide the config file's value
        merged = {**_read_config_file(home), **{k: v for k, v in env.items() if v}, **given}
        # a file given explicitly wins over an inline value from the environment
        for file_var, inline_var in (("MLSECRETS_TOKEN_FILE", "MLSECRETS_TOKEN"),
                                     ("MLSECRETS_PKCS11_PIN_FILE", "MLSECRETS_PKCS11_PIN")):
            if file_var in given and inline_var not in given:
                merged.pop(inline_var, None)
        raw = {name: merged.get(var) or None for name, var in ENVIRONMENT.items()}
        kwargs: dict[str, object] = {"home": home}
        kwargs["db_url"] = raw["db_url"] or f"sqlite:///{home / 'vault.db'}"
        for name in ("pkcs11_module", "pkcs11_pin", "token", "url", "audit_checkpoint_url"):
            kwargs[name] = raw[name]
        for name in ("pkcs11_pin_file", "softhsm2_conf", "token_file", "ca_file", "alert_rules"):
            kwargs[name] = _resolve(home, raw[name])
        for name in ("pkcs11_token", "key_prefix", "audit_min_retention",
                     "break_glass_max_window", "break_glass_request_ttl"):
            if raw[name]:
                kwargs[name] = raw[name]
        if raw["trusted_proxies"]:
            kwargs["trusted_proxies"] = tuple(
                p.strip() for p in raw["trusted_proxies"].split(",") if p.strip())
        for name in ("max_value_bytes", "max_versions", "rotation_lease", "data_key_cache_ttl",
                     "data_key_cache_uses", "audit_mark_interval", "alert_interval"):
            value = raw[name]
            if value:
                kwargs[name] = _integer(ENVIRONMENT[name], value)
        return cls(**kwargs)  # type: ignore[arg-type]

    def min_audit_retention(self) -> timedelta:
        """How young a record ``audit prune`` may not touch (``0``: no minimum)."""
        if self.audit_min_retention.strip() == "0":
            return timedelta(0)
        return parse_duration(self.audit_min_retention)

    @property
    def lock_file(self) -> Path:
        """The file lock that serialises PKCS#11 initialise-and-login across processes."""
        if self.softhsm2_conf is not None:
            return self.softhsm2_conf.with_name("pkcs11.lock")
        return self.home / "pkcs11.lock"

    def read_pin(self) -> str:
        """The HSM user PIN, read from the environment or its file at the moment of login."""
        if self.pkcs11_pin:
            return self.pkcs11_pin
        if self.pkcs11_pin_file is not None:
            return _read_secret_file(self.pkcs11_pin_file, "MLSECRETS_PKCS11_PIN_FILE")
        raise ConfigurationError(
            "no HSM PIN: set MLSECRETS_PKCS11_PIN_FILE (recommended) or MLSECRETS_PKCS11_PIN, "
            "or run 'mlsecrets init --dev' for a local SoftHSM2 token"
        )

    def read_caller_token(self) -> str | None:
        """The caller's principal token, if one is configured."""
        if self.token:
            return self.token.strip()
        if self.token_file is not None:
            return _read_secret_file(self.token_file, "MLSECRETS_TOKEN_FILE")
        return None

    def as_config(self) -> dict[str, str]:
        """The non-secret settings as ``config.json`` stores them (no PIN, no token)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("home", "pkcs11_pin", "token", "token_file") or value is None:
                continue
            out[ENVIRONMENT[f.name]] = (",".join(value) if isinstance(value, tuple)
                                        else str(value))
        return out


def _setting_name(name: str) -> str:
    if name not in ENVIRONMENT:
        raise ConfigurationError(
            f"unknown setting {name!r}; settings are {', '.join(sorted(ENVIRONMENT))}")
    return name


def _read_config_file(home: Path) -> dict[str, str]:
    path = home / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        k in ENVIRONMENT.values() and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigurationError(
            f"{path} must be a JSON object of MLSECRETS_* names to strings; "
            "see docs/configuration.md"
        )
    return data


def _resolve(home: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else home / path


def _integer(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, not {value!r}") from None


def _read_secret_file(path: Path, name: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {name} ({path}): {exc.strerror}") from None
    if not text:
        raise ConfigurationError(f"{name} ({path}) is empty")
    return text


def _loopback_http(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "::1", "localhost")
