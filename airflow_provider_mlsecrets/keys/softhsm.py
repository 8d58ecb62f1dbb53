"""Provisioning a local SoftHSM2 token for ``mlsecrets init --dev``.

The token lives under ``$MLSECRETS_HOME/softhsm`` with its own configuration file
(``library.reset_on_fork = true``, so it behaves like a network HSM across forks). Its PINs
are random and never put on a command line: the token is created with throwaway PINs and
the real ones are then set through PKCS#11. The user PIN is written to a 0600 file; the
security officer's PIN is not kept anywhere. The vault never logs in as the SO, and on a
development token the SO could only reset the user PIN or re-initialise the token, which
deleting ``softhsm/`` and running ``init --dev`` again does as well; a copy beside the user
PIN would only be a second key to the same door.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess  # softhsm2-util only, with a fixed argv # nosec B404
from dataclasses import dataclass
from pathlib import Path

from airflow_provider_mlsecrets._files import write_private
from airflow_provider_mlsecrets.errors import ConfigurationError, HSMUnavailable

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
CONF_TEMPLATE = """\
# Written by 'mlsecrets init --dev'. SoftHSM2 reads it through SOFTHSM2_CONF.
directories.tokendir = {tokens}
objectstore.backend = file
log.level = ERROR
slots.removable = false
library.reset_on_fork = true
"""


@dataclass(frozen=True)
class DevToken:
    module: str
    conf: Path
    pin_file: Path


def find_module() -> str:
    for candidate in MODULE_CANDIDATES:
        if os.path.isfile(candidate):
            return candidate
    raise HSMUnavailable(
        "SoftHSM2 is not installed (no libsofthsm2.so found); install it with "
        "'apt-get install softhsm2', or set MLSECRETS_PKCS11_MODULE to your HSM's module")


def provision(home: Path, label: str) -> DevToken:
    """Create (once) a SoftHSM2 token labelled ``label`` under ``home``."""
    module = find_module()
    base = home / "softhsm"
    conf, tokens, pin_file = base / "softhsm2.conf", base / "tokens", home / "pkcs11.pin"
    token = DevToken(module=module, conf=conf, pin_file=pin_file)
    if conf.exists() and pin_file.exists():
        return token
    if conf.exists():
        raise ConfigurationError(
            f"{base} holds a half-provisioned token (no {pin_file.name}); remove {base} and "
            "run 'mlsecrets init --dev' again")
    util = shutil.which("softhsm2-util")
    if util is None:
        raise HSMUnavailable("softhsm2-util is not on PATH; install the softhsm2 package")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)  # mode applies only if it is new
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(base, 0o700)
    conf.write_text(CONF_TEMPLATE.format(tokens=tokens), encoding="utf-8")
    throwaway_so, throwaway_user = "init-" + secrets.token_hex(4), "init-" + secrets.token_hex(4)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell # nosec B603
        [util, "--init-token", "--free", "--label", label, "--so-pin", throwaway_so,
         "--pin", throwaway_user], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigurationError(f"softhsm2-util could not create the token: "
                                 f"{result.stderr.strip() or result.stdout.strip()}")
    _set_real_pins(module, conf, label, throwaway_so, throwaway_user, pin_file)
    return token


def _set_real_pins(module: str, conf: Path, label: str, old_so: str, old_user: str,
                   pin_file: Path) -> None:
    """Replace the PINs that were on ``softhsm2-util``'s command line: the user PIN with
    one kept in ``pin_file``, the SO PIN with one that is used here once and forgotten."""
    import pkcs11

    from airflow_provider_mlsecrets.keys import _session

    os.environ["SOFTHSM2_CONF"] = str(conf)
    user_pin, so_pin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    with _session.PROCESS_LOCK:
        lib = pkcs11.lib(module)
        _session.reinitialise(module)  # pick up the token that was just created
        token = lib.get_token(token_label=label)
        with token.open(rw=True, user_pin=old_user) as session:
            session.set_pin(old_user, user_pin)
        with token.open(rw=True, so_pin=old_so) as session:
            session.set_pin(old_so, so_pin)  # then forgotten: never written anywhere
    write_private(pin_file, user_pin + "\n")
