"""The ``mlsecrets`` command as people and scripts run it: real processes, real files."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

CANARY = b"CANARY-sk-9f8e7d6c5b4a"
MLSECRETS = [sys.executable, "-m", "airflow_provider_mlsecrets.cli.main"]


class Cli:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLSECRETS_")}
        self.env.update(MLSECRETS_HOME=str(home), MLSECRETS_TOKEN_FILE=str(home / "admin.token"))

    def __call__(self, *args: str, stdin: bytes | None = None, token_file: Path | None = None,
                 **env: str) -> subprocess.CompletedProcess[bytes]:
        full_env = {**self.env, **env}
        if token_file is not None:
            full_env["MLSECRETS_TOKEN_FILE"] = str(token_file)
        return subprocess.run([*MLSECRETS, *args], input=stdin if stdin is not None else b"",
                              capture_output=True, env=full_env, timeout=120, check=False)

    def ok(self, *args: str, **kwargs: object) -> str:
        result = self(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    def token_for(self, name: str, role: str) -> Path:
        path = self.home / f"{name}.token"
        self.ok("principal", "create", name, "--role", role, "--out", str(path))
        return path


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = Cli(tmp_path_factory.mktemp("cli") / "home")
    out = cli.ok("init", "--dev")
    assert "initialised" in out and "admin.token" in out
    return cli


def test_init_is_idempotent_and_files_are_private(cli: Cli) -> None:
    first_token = (cli.home / "admin.token").read_text()
    again = cli("init", "--dev")
    assert again.returncode == 0 and b"already initialised; nothing changed" in again.stdout
    assert (cli.home / "admin.token").read_text() == first_token
    for name in ("admin.token", "pkcs11.pin", "vault.db", "config.json"):
        assert stat.S_IMODE((cli.home / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(cli.home.stat().st_mode) == 0o700
    assert not (cli.home / "pkcs11.so-pin").exists()  # the SO PIN is not kept
    config = json.loads((cli.home / "config.json").read_text())
    assert "MLSECRETS_PKCS11_PIN" not in config and "library.reset_on_fork = true" in Path(
        config["MLSECRETS_SOFTHSM2_CONF"]).read_text()
    status = json.loads(cli.ok("status", "--json"))
    assert status["you"] == "admin (security_engineer)"


def test_put_get_round_trip_from_every_source(cli: Cli, tmp_path: Path) -> None:
    cli.ok("secret", "put", "cli/stdin", "--stdin", stdin=CANARY)
    assert cli.ok("secret", "get", "--reason", "in a test", "cli/stdin").encode() == CANARY
    value_file = tmp_path / "v"
    value_file.write_bytes(b"from-a-file\n")
    cli.ok("secret", "put", "cli/file", "--value-file", str(value_file))
    assert cli("secret", "get", "--reason", "in a test", "cli/file").stdout == b"from-a-file\n"
    out = json.loads(cli.ok("secret", "put", "cli/gen", "--generate", "40", "--json"))
    assert out["version"] == 1
    generated = cli("secret", "get", "--reason", "in a test", "cli/gen").stdout
    assert len(generated) == 40 and generated.isalnum()
    assert json.loads(cli.ok("secret", "get", "--reason", "in a test", "cli/stdin",
            "--json"))["value"] == CANARY.decode()


def test_a_value_is_never_taken_from_the_command_line(cli: Cli) -> None:
    result = cli("secret", "put", "cli/x", "--value", "oops")
    assert result.returncode == 2
    assert cli("secret", "put", "cli/x").returncode == 2  # a source is required


@pytest.mark.parametrize(("args", "code", "message"), [
    (["secret", "get", "--reason", "in a test", "../etc/passwd"], 2, b"segments joined by '/'"),
    (["secret", "get", "--reason", "in a test", "no/such/secret"], 4,
            b"no secret at no/such/secret"),
    (["secret", "destroy", "cli/stdin"], 2, b"--version"),
    (["grant", "admin", "a/**", "fly"], 2, b"unknown capability"),
    (["secret", "put", "cli/big", "--generate", "999999"], 2, b"--generate"),
])
def test_exit_codes_and_messages(cli: Cli, args: list[str], code: int, message: bytes) -> None:
    result = cli(*args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_oversize_values_are_refused(cli: Cli) -> None:
    result = cli("secret", "put", "cli/big", "--stdin", stdin=b"x" * (64 * 1024 + 1))
    assert result.returncode == 2 and b"over the limit of 65536" in result.stderr
    assert cli("secret", "get", "--reason", "in a test", "cli/big").returncode == 4


def test_roles_bad_tokens_and_the_denied_record(cli: Cli, tmp_path: Path) -> None:
    cli.ok("secret", "put", "ml/train/key", "--stdin", stdin=b"train-key")
    viewer = cli.token_for("viewer1", "viewer")
    pipeline = cli.token_for("pipe1", "pipeline")
    cli.ok("grant", "pipe1", "ml/**", "inject")
    for token in (viewer, pipeline):
        result = cli("secret", "get", "--reason", "in a test", "ml/train/key", token_file=token)
        assert result.returncode == 3 and result.stdout == b""
    bad = tmp_path / "bad.token"
    bad.write_text("mls_" + "x" * 43)
    assert cli("secret", "get", "--reason", "in a test", "ml/train/key",
            token_file=bad).returncode == 3
    assert cli("secret", "get", "--reason", "in a test", "ml/train/key",
            token_file=tmp_path / "missing").returncode == 1
    tail = json.loads(cli.ok("audit", "tail", "-n", "200", "--outcome", "denied", "--json"))
    assert {(r["principal"], r["action"], r["path"]) for r in tail} >= {
        ("viewer1", "secret.read", "ml/train/key"), ("pipe1", "secret.read", "ml/train/key"),
        ("<unauthenticated>", "secret.read", "ml/train/key")}
    cli.ok("principal", "revoke", "viewer1")
    assert cli("secret", "list", token_file=viewer).returncode == 3
    listing = json.loads(cli.ok("principal", "list", "--json"))
    assert {p["name"]: p["status"] for p in listing}["viewer1"] == "revoked"


def test_swapped_ciphertexts_exit_5(cli: Cli) -> None:
    cli.ok("secret", "put", "swap/a", "--stdin", stdin=b"secret-a")
    cli.ok("secret", "put", "swap/b", "--stdin", stdin=b"secret-b")
    db = sqlite3.connect(cli.home / "vault.db")
    rows = db.execute("SELECT v.id, v.wrapped_key, v.ciphertext FROM mlsecrets_secret_versions v "
                      "JOIN mlsecrets_secrets s ON s.id = v.secret_id WHERE s.path LIKE 'swap/%' "
                      "ORDER BY s.path").fetchall()
    (ida, wa, ca), (idb, wb, cb) = rows
    db.execute("UPDATE mlsecrets_secret_versions SET wrapped_key = ?, ciphertext = ? WHERE id = ?",
               (wb, cb, ida))
    db.execute("UPDATE mlsecrets_secret_versions SET wrapped_key = ?, ciphertext = ? WHERE id = ?",
               (wa, ca, idb))
    db.commit()
    db.close()
    for path in ("swap/a", "swap/b"):
        result = cli("secret", "get", "--reason", "in a test", path)
        assert result.returncode == 5 and result.stdout == b""
        assert b"could not be authenticated" in result.stderr


def test_the_canary_is_nowhere_on_disk_or_in_output(cli: Cli) -> None:
    result = cli("secret", "put", "canary/x", "--stdin", stdin=CANARY)
    assert CANARY not in result.stdout + result.stderr
    cli.ok("secret", "get", "--reason", "in a test", "canary/x")
    cli.ok("audit", "export")
    for path in cli.home.rglob("*"):
        if path.is_file():
            assert CANARY not in path.read_bytes(), path
    assert CANARY not in cli("audit", "export").stdout


def test_verify_checkpoint_and_tamper_exit_5(cli: Cli, tmp_path: Path) -> None:
    checkpoint = tmp_path / "cp.json"
    cli.ok("audit", "checkpoint", "--out", str(checkpoint))
    out = cli.ok("audit", "verify", "--checkpoint", str(checkpoint))
    assert "audit trail OK" in out and "checkpoint matched" in out
    assert json.loads(cli.ok("audit", "verify", "--all-seals", "--json"))["ok"] is True
    db = sqlite3.connect(cli.home / "vault.db")
    db.execute("DROP TRIGGER mlsecrets_audit_no_update")
    db.execute("UPDATE mlsecrets_audit SET reason = 'nothing to see' WHERE seq = 3")
    db.commit()
    db.close()
    result = cli("audit", "verify")
    assert result.returncode == 5 and b"record 3" in result.stderr


def test_unreachable_database_and_hsm_exit_1_with_advice(cli: Cli, tmp_path: Path) -> None:
    result = cli("secret", "list",
                 MLSECRETS_DB_URL="postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert result.returncode == 1 and b"check MLSECRETS_DB_URL" in result.stderr
    result = cli("secret", "list", MLSECRETS_PKCS11_MODULE=str(tmp_path / "missing.so"))
    assert result.returncode == 1 and b"MLSECRETS_PKCS11_MODULE" in result.stderr
    assert b"Traceback" not in result.stderr


def test_eight_cli_processes_at_the_same_moment(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")  # a trail of its own: another test tampers with the shared one
    cli.ok("init", "--dev")

    def put_and_get(i: int) -> tuple[int, bytes]:
        value = f"parallel-value-{i}".encode()
        put = cli("secret", "put", f"par/s{i}", "--stdin", stdin=value)
        if put.returncode != 0:
            return put.returncode, put.stderr
        got = cli("secret", "get", "--reason", "in a test", f"par/s{i}")
        return got.returncode, got.stdout if got.returncode == 0 else got.stderr

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(put_and_get, range(8)))
    assert results == [(0, f"parallel-value-{i}".encode()) for i in range(8)]
    # init, 8 puts, 8 gets, and the count that sizes the progress bar
    assert "audit trail OK: 18 records" in cli.ok("audit", "verify")


def test_json_is_accepted_before_and_after_the_subcommand(cli: Cli) -> None:
    for args in (["--json", "status"], ["status", "--json"], ["secret", "--json", "list"]):
        json.loads(cli.ok(*args))


def test_an_empty_variable_does_not_hide_the_config_file(cli: Cli) -> None:
    assert json.loads(cli.ok("status", "--json", MLSECRETS_PKCS11_MODULE=""))["pkcs11_module"]



def test_key_rotate_through_the_cli(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    cli.ok("init", "--dev")
    for i in range(3):
        cli.ok("secret", "put", f"k/s{i}", "--stdin", stdin=f"v{i}".encode())
    report = json.loads(cli.ok("key", "rotate", "--json"))
    assert (report["current"], report["rewrapped"], report["disabled"]) == (
        "mlsecrets-kek-2", 3, ["mlsecrets-kek-1"])
    assert json.loads(cli.ok("key", "rotate", "--resume", "--json"))["rewrapped"] == 0
    keys = {k["label"]: k for k in json.loads(cli.ok("key", "list", "--json"))}
    assert keys["mlsecrets-kek-1"]["state"] == "disabled"
    assert keys["mlsecrets-kek-2"]["versions_wrapped"] == 3
    assert [cli.ok("secret", "get", "--reason", "in a test",
            f"k/s{i}") for i in range(3)] == ["v0", "v1", "v2"]


def test_a_failed_init_leaves_no_token_file(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    cli.ok("init", "--dev")
    db = sqlite3.connect(cli.home / "vault.db")  # an engineer's row altered: none is active
    db.execute("UPDATE mlsecrets_principals SET role = 'security_engineer', name = 'x'")
    db.execute("DELETE FROM mlsecrets_audit_head")
    db.commit()
    db.close()
    out = tmp_path / "new.token"
    result = cli("init", "--admin", "recovery", "--token-out", str(out))
    assert result.returncode == 1 and not out.exists()


def test_reseal_through_the_cli(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    cli.ok("init", "--dev")
    ref = cli.ok("seal", "s/x", "--stdin", stdin=b"sealed-cli").strip()
    cli.ok("key", "rotate", "--keep-retired")
    new_ref = cli.ok("reseal", stdin=(ref + "\n").encode()).strip()
    assert new_ref.startswith("sealed:s/x:mlsealed1.") and new_ref != ref
    assert b"sealed-cli" not in cli("reseal", stdin=(ref + "\n").encode()).stdout
    assert cli("reseal", stdin=b"var:not-sealed\n").returncode == 2


def test_a_token_sent_to_a_redirect_says_where_it_went_and_how_to_keep_it_private(
        cli: Cli) -> None:
    """``principal create NAME > FILE``: standard output is no terminal, so there is no
    "token above"; the message says the token went to standard output and points to --out."""
    result = cli("principal", "create", "redirected", "--role", "viewer")
    assert result.returncode == 0, result.stderr.decode()
    err = result.stderr.decode()
    assert "the token above" not in err and "--out FILE" in err and "0600" in err
    assert len(result.stdout.decode().strip()) > 40  # the token itself, on stdout only


def test_an_empty_value_needs_allow_empty(cli: Cli) -> None:
    refused = cli("secret", "put", "ml/blank", "--stdin", stdin=b"")
    assert refused.returncode == 2 and b"--allow-empty" in refused.stderr
    cli.ok("secret", "put", "ml/blank", "--stdin", "--allow-empty", stdin=b"")
    assert cli.ok("secret", "get", "--reason", "in a test", "ml/blank") in ("", "\n")
