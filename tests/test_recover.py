"""scripts/recover.py decrypts versions from the database rows and the HSM alone, in a
process that never imports the package, following docs/formats.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Env

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "recover.py"


def recover(env: Env, *args: str) -> subprocess.CompletedProcess[bytes]:
    settings = env.settings
    assert settings.pkcs11_module and settings.pkcs11_pin_file and settings.softhsm2_conf
    code = ("import sys, runpy; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__'); "
            "assert not [m for m in sys.modules if m.startswith('airflow_provider_mlsecrets')]")
    return subprocess.run(
        [sys.executable, "-c", code, str(SCRIPT), "--db-url", settings.db_url,
         "--module", settings.pkcs11_module, "--token", settings.pkcs11_token,
         "--pin-file", str(settings.pkcs11_pin_file), *args],
        capture_output=True, timeout=120, check=False,
        env={**os.environ, "SOFTHSM2_CONF": str(settings.softhsm2_conf)})


def test_recover_decrypts_current_and_older_versions(env: Env, tmp_path: Path) -> None:
    binary = bytes(range(256)) * 3
    env.vault.secrets.put(env.admin, "ml/blob", binary)
    env.vault.secrets.put(env.admin, "ml/blob", "ünïcode-π".encode())
    current = recover(env, "ml/blob")
    assert current.returncode == 0, current.stderr.decode()[-2000:]
    assert current.stdout == "ünïcode-π".encode()
    older = recover(env, "ml/blob", "--version", "1", "--out", str(tmp_path / "v1"))
    assert older.returncode == 0, older.stderr.decode()[-2000:]
    assert (tmp_path / "v1").read_bytes() == binary
    assert (tmp_path / "v1").stat().st_mode & 0o777 == 0o600


def test_recover_follows_a_key_rotation_and_refuses_what_is_gone(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/key", b"before-rotation")
    env.vault.keys.rotate(env.admin)  # the data key is now wrapped under KEK 2
    assert recover(env, "ml/key").stdout == b"before-rotation"
    env.vault.secrets.put(env.admin, "ml/key", b"second")
    env.vault.secrets.destroy(env.admin, "ml/key", 1)
    destroyed = recover(env, "ml/key", "--version", "1")
    assert destroyed.returncode != 0 and b"was destroyed" in destroyed.stderr
    missing = recover(env, "ml/nothing")
    assert missing.returncode != 0 and b"no version" in missing.stderr
