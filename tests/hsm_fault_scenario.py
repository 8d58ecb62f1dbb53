"""Run in a fresh process by tests/test_hsm_faults.py: the HSM fails under a running vault
in three ways and comes back; prints one JSON line per step. A separate process, because
finalising the PKCS#11 library would pull it from under every other test's sessions."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pkcs11

from airflow_provider_mlsecrets.errors import MLSecretsError
from airflow_provider_mlsecrets.keys.softhsm import provision
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.settings import Settings

VALUE = b"hsm-fault-canary-5d41"


def attempt(step: str, work: object) -> None:
    try:
        result = work()  # type: ignore[operator]
        out = {"step": step, "ok": True, "value": result == VALUE}
    except MLSecretsError as exc:
        out = {"step": step, "ok": False, "error": type(exc).__name__, "message": str(exc),
               "leak": VALUE.decode() in str(exc)}
    print(json.dumps(out), flush=True)


def main(home: Path) -> None:
    dev = provision(home, "faulty")
    os.environ["SOFTHSM2_CONF"] = str(dev.conf)
    settings = Settings(home=home, db_url=f"sqlite:///{home / 'vault.db'}",
                        pkcs11_module=dev.module, pkcs11_token="faulty",
                        pkcs11_pin_file=dev.pin_file, softhsm2_conf=dev.conf)
    vault = Vault(settings)
    admin = Caller(vault.initialise().admin_token)
    vault.secrets.put(admin, "ml/key", VALUE)
    pipeline = Caller(vault.access.create_principal(admin, "etl", "pipeline"))
    vault.access.grant(admin, "etl", "ml/**", ["inject"])
    lib = pkcs11.lib(dev.module)

    def read() -> bytes:
        return vault.secrets.inject(pipeline, "ml/key")

    attempt("before", read)

    # 1. the library is finalised behind the vault's back (a reset, a crashed module)
    lib.finalize()
    attempt("module finalised", read)

    # 2. the token is removed, then put back
    tokens = home / "softhsm" / "tokens"
    shutil.move(tokens, home / "tokens.away")
    tokens.mkdir()
    lib.finalize()
    attempt("token removed", read)
    attempt("token removed, write", lambda: vault.secrets.put(admin, "ml/other", b"x"))
    tokens.rmdir()
    shutil.move(home / "tokens.away", tokens)
    attempt("token back", read)

    # 3. the user PIN is changed by an HSM officer; the vault's PIN file is then updated
    old = dev.pin_file.read_text().strip()
    new = old[::-1] + "9"
    with lib.get_token(token_label="faulty").open(rw=True) as session:
        session.set_pin(old, new)
    lib.finalize()
    attempt("PIN changed", read)
    dev.pin_file.write_text(new + "\n")
    attempt("PIN file updated", read)

    report = vault.audit.verify(admin, all_seals=True)
    print(json.dumps({"step": "verify", "ok": report.ok, "records": report.records}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
