#!/usr/bin/env python3
"""Decrypt one secret version from the vault's database rows and the HSM alone.

For disaster recovery when the mlsecrets package cannot run: this script does not import
it. It follows docs/formats.md section 2 (canonical encoding, associated data, the envelope
layout) with python-pkcs11, cryptography and SQLAlchemy only:

1. read ``vault_id`` from ``mlsecrets_vault`` and the version row (``kek_id``,
   ``wrapped_key``, ``nonce``, ``ciphertext``, ``format_version``) of ``PATH``;
2. unwrap the data key inside the HSM: ``C_Decrypt`` with ``CKM_AES_GCM`` under the secret
   key labelled ``kek_id``, IV = the first 12 bytes of ``wrapped_key``, AAD = key AD;
3. decrypt the payload with AES-256-GCM, AAD = payload AD.

Usage (the PIN is read from a file, never from the command line):

    python scripts/recover.py --db-url sqlite:////var/lib/mlsecrets/vault.db \\
        --module /usr/lib/softhsm/libsofthsm2.so --token mlsecrets \\
        --pin-file /etc/mlsecrets/pkcs11.pin ml/openai/api_key [--version N] [--out FILE]

Without ``--out`` the value goes to standard output as is (bytes); with it, to a new file
created 0600. Nothing is written to the database and nothing is logged.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams
from sqlalchemy import create_engine, text

NONCE = 12


def field(value: int | str | bytes) -> bytes:
    """formats.md 1: an unsigned int as 8 bytes big-endian, text as UTF-8, bytes as is."""
    if isinstance(value, bool):
        raise TypeError("no canonical encoding for bool")
    if isinstance(value, int):
        return value.to_bytes(8, "big")
    return value.encode("utf-8") if isinstance(value, str) else value


def encode(*fields: int | str | bytes) -> bytes:
    return b"".join(struct.pack(">I", len(b)) + b for b in map(field, fields))


@dataclass(frozen=True)
class VersionRow:
    version: int
    format_version: int
    kek_id: str
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes


def read_rows(db_url: str, path: str, version: int | None) -> tuple[str, VersionRow]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            vault_id = c.execute(text("SELECT vault_id FROM mlsecrets_vault")).scalar_one()
            row = c.execute(text(
                "SELECT v.version, v.state, v.format_version, v.kek_id, v.wrapped_key, "
                "v.nonce, v.ciphertext FROM mlsecrets_secret_versions v "
                "JOIN mlsecrets_secrets s ON s.id = v.secret_id WHERE s.path = :path AND "
                "v.version = COALESCE(:version, s.current_version)"),
                {"path": path, "version": version}).mappings().one_or_none()
    finally:
        engine.dispose()
    if row is None:
        raise SystemExit(f"recover: no version {version or '(current)'} of {path} in the rows")
    if row["wrapped_key"] is None or row["nonce"] is None or row["ciphertext"] is None:
        raise SystemExit(f"recover: version {row['version']} of {path} was destroyed")
    return str(vault_id), VersionRow(
        version=int(row["version"]), format_version=int(row["format_version"]),
        kek_id=str(row["kek_id"]), wrapped_key=bytes(row["wrapped_key"]),
        nonce=bytes(row["nonce"]), ciphertext=bytes(row["ciphertext"]))


def unwrap(module: str, token: str, pin: str, row: VersionRow, key_ad: bytes) -> bytes:
    wrapped = row.wrapped_key
    lib = pkcs11.lib(module)
    with lib.get_token(token_label=token).open(user_pin=pin) as session:
        kek: Any = session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES,
                                   label=row.kek_id)
        data_key: bytes = kek.decrypt(wrapped[NONCE:], mechanism=Mechanism.AES_GCM,
                                      mechanism_param=GCMParams(wrapped[:NONCE], key_ad))
    return data_key


def recover(db_url: str, module: str, token: str, pin: str, path: str,
            version: int | None) -> bytes:
    vault_id, row = read_rows(db_url, path, version)
    if row.format_version != 1:
        raise SystemExit(f"recover: format version {row.format_version} is not described in "
                         "formats.md 2")
    payload_ad = encode(row.format_version, vault_id, path, row.version)
    data_key = unwrap(module, token, pin, row, payload_ad + encode(row.kek_id))
    return AESGCM(data_key).decrypt(row.nonce, row.ciphertext, payload_ad)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--version", type=int)
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--module", required=True, help="the PKCS#11 library")
    parser.add_argument("--token", required=True, help="the token's label")
    parser.add_argument("--pin-file", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="a new file (0600) instead of stdout")
    args = parser.parse_args()
    pin = args.pin_file.read_text(encoding="utf-8").strip()
    value = recover(args.db_url, args.module, args.token, pin, args.path, args.version)
    if args.out is None:
        sys.stdout.buffer.write(value)
        return 0
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
