"""Backup and restore on a real SoftHSM2 token: SQLite and PostgreSQL vaults restored into
an empty PostgreSQL database (and SQLite), every secret read back with the same HSM."""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from airflow_provider_mlsecrets._files import private_file
from airflow_provider_mlsecrets.cli.main import main
from airflow_provider_mlsecrets.errors import (
    AccessDenied,
    AuditError,
    IntegrityError,
    InvalidInput,
    NotFound,
)
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.service.backup import BackupService
from airflow_provider_mlsecrets.store.engine import engine_for
from tests.conftest import Env, empty_postgres

VALUES = {f"ml/team{i % 3}/key{i}": f"value-{i}-{uuid.uuid4().hex}".encode() for i in range(12)}
OLD, NEW, GONE = (f"{word}-{uuid.uuid4().hex}".encode() for word in ("old", "new", "gone"))


def fill(env: Env) -> Caller:
    for path, value in VALUES.items():
        env.vault.secrets.put(env.admin, path, value)
    env.vault.secrets.put(env.admin, "ml/rotated", OLD)
    env.vault.secrets.put(env.admin, "ml/rotated", NEW)
    env.vault.secrets.destroy(env.admin, "ml/rotated", 1)
    env.vault.secrets.put(env.admin, "ml/gone", GONE)
    env.vault.secrets.delete(env.admin, "ml/gone")
    return env.principal("etl", "pipeline", ("ml/team0/**", ["inject"]))


def take_backup(env: Env, tmp_path: Path) -> Path:
    out = tmp_path / "vault.backup"
    with private_file(out) as handle:
        env.vault.backups.backup(env.admin, handle)
    return out


def test_a_backup_restored_into_an_empty_postgres_reads_back_every_secret(
        env: Env, tmp_path: Path) -> None:
    etl = fill(env)
    backup = take_backup(env, tmp_path)
    assert backup.stat().st_mode & 0o777 == 0o600
    raw = backup.read_bytes()
    for value in [*VALUES.values(), OLD, NEW, GONE]:
        assert value not in raw  # ciphertexts and wrapped keys only
    with empty_postgres() as url:
        restored = Vault(dataclasses.replace(env.settings, db_url=url))
        info = restored.backups.restore(backup, accept_rollback=True)  # its own record
        assert info.audit_ok and info.rows["mlsecrets_secrets"] == len(VALUES) + 2
        for path, value in VALUES.items():
            assert restored.secrets.read(env.admin, path, reason="in a test") == value
        assert restored.secrets.read(env.admin, "ml/rotated", reason="in a test") == NEW
        with pytest.raises(NotFound, match="destroyed"):
            restored.secrets.read(env.admin, "ml/rotated", 1, reason="in a test")
        with pytest.raises(NotFound, match="deleted"):
            restored.secrets.read(env.admin, "ml/gone", reason="in a test")
        # the policy came along: the pipeline's token works, and only where it was granted
        assert restored.secrets.inject(etl, "ml/team0/key0") == VALUES["ml/team0/key0"]
        with pytest.raises(AccessDenied):
            restored.secrets.inject(etl, "ml/team1/key1")
        # new rows get fresh ids after explicit ones (PostgreSQL sequences moved on)
        restored.secrets.put(env.admin, "ml/after-restore", b"fresh")
        restored.access.create_principal(env.admin, "after", "viewer")
        assert restored.secrets.read(env.admin, "ml/after-restore", reason="in a test") == b"fresh"
        report = restored.audit.verify(env.admin, all_seals=True)
        assert report.ok and report.records > info.audit_records - 1
        actions = [r.action for r in restored.audit.tail(env.admin, 50)]
        assert "vault.restore" in actions


def test_a_backup_restores_into_sqlite_too(env: Env, tmp_path: Path) -> None:
    fill(env)
    backup = take_backup(env, tmp_path)
    restored = Vault(dataclasses.replace(
        env.settings, db_url=f"sqlite:///{tmp_path / 'restored.db'}"))
    restored.backups.restore(backup, accept_rollback=True)
    assert {p: restored.secrets.read(env.admin, p, reason="in a test") for p in VALUES} == VALUES


def test_a_changed_backup_is_refused_before_anything_is_written(env: Env,
                                                                tmp_path: Path) -> None:
    fill(env)
    backup = take_backup(env, tmp_path)
    lines = backup.read_text().splitlines(keepends=True)
    row = json.loads(lines[5])
    row["r"] = [v + 1 if isinstance(v, int) and not isinstance(v, bool) else v
                for v in row["r"]]
    lines[5] = json.dumps(row, separators=(",", ":")) + "\n"
    changed, cut = tmp_path / "changed.backup", tmp_path / "cut.backup"
    changed.write_text("".join(lines))
    cut.write_text("".join(lines[:-3]) + lines[-1])
    target = f"sqlite:///{tmp_path / 'target.db'}"
    for bad in (changed, cut):
        with pytest.raises(IntegrityError, match="changed, cut short, or made with another HSM"):
            Vault(dataclasses.replace(env.settings, db_url=target)).backups.restore(bad)
    assert not (tmp_path / "target.db").exists() or _empty(target)


def _empty(url: str) -> bool:
    with engine_for(url).connect() as c:
        tables = c.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).all()
    return not tables


def test_restore_refuses_a_database_that_holds_a_vault(env: Env, tmp_path: Path) -> None:
    fill(env)
    backup = take_backup(env, tmp_path)
    with pytest.raises(InvalidInput, match="already holds vault data"):
        env.vault.backups.restore(backup)


def test_restore_refuses_another_hsm(env: Env, tmp_path: Path) -> None:
    fill(env)
    backup = take_backup(env, tmp_path)
    other = dataclasses.replace(env.settings, key_prefix="other" + uuid.uuid4().hex[:6],
                                db_url=f"sqlite:///{tmp_path / 'other.db'}")
    Vault(other).core.keys.ensure_mac_keys()  # a token with other keys: the seal differs
    with pytest.raises(IntegrityError, match="another HSM"):
        Vault(other).backups.restore(backup)


def test_only_an_unfenced_security_engineer_takes_a_backup(env: Env, tmp_path: Path) -> None:
    fill(env)
    auditor = env.principal("ada", "auditor")
    with pytest.raises(AccessDenied), private_file(tmp_path / "no.backup") as handle:
        env.vault.backups.backup(auditor, handle)
    assert not (tmp_path / "no.backup").exists()
    fenced = Caller(env.vault.access.create_principal(env.admin, "fenced", "security_engineer"))
    env.vault.access.grant(env.admin, "fenced", "ml/team2/**", ["read"], deny=True)
    with pytest.raises(AccessDenied, match="fenced"), \
            private_file(tmp_path / "no.backup") as handle:
        env.vault.backups.backup(fenced, handle)
    denied = [r for r in env.vault.audit.tail(env.admin, 20) if r.action == "vault.backup"]
    assert {r.outcome for r in denied} == {"denied"}


def test_the_cli_backs_up_and_restores(env: Env, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    fill(env)
    token_file = tmp_path / "admin.token"
    token_file.write_text(str(env.admin.token))
    for name, value in env.settings.as_config().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLSECRETS_HOME", str(tmp_path))
    monkeypatch.setenv("MLSECRETS_TOKEN_FILE", str(token_file))
    assert main(["backup", "--out", str(tmp_path / "cli.backup")]) == 0
    assert "rows written" in capsys.readouterr().out
    monkeypatch.setenv("MLSECRETS_DB_URL", f"sqlite:///{tmp_path / 'cli-restored.db'}")
    # the backup's own record is newer than the backup: restoring it is a rollback
    assert main(["--json", "restore", "--in", str(tmp_path / "cli.backup")]) == 5
    assert "--accept-rollback" in capsys.readouterr().err
    assert main(["--json", "restore", "--in", str(tmp_path / "cli.backup"),
                 "--accept-rollback"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["audit_ok"] is True and result["rows"]["mlsecrets_secrets"] == len(VALUES) + 2
    assert main(["restore", "--in", str(tmp_path / "cli.backup")]) == 2  # not empty any more
    assert "already holds vault data" in capsys.readouterr().err


# -- from the security review -------------------------------------------------------------
def test_a_row_smuggled_into_the_trailer_is_refused(env: Env, tmp_path: Path) -> None:
    fill(env)
    backup = take_backup(env, tmp_path)
    lines = backup.read_text().splitlines(keepends=True)
    trailer = json.loads(lines[-1])
    trailer.update(t="mlsecrets_audit_head", r=[0, 0, "AA=="])
    forged = tmp_path / "forged.backup"
    forged.write_text("".join(lines[:-1]) + json.dumps(trailer) + "\n")
    target = dataclasses.replace(env.settings, db_url=f"sqlite:///{tmp_path / 't.db'}")
    with pytest.raises(IntegrityError, match="changed, cut short"):
        Vault(target).backups.restore(forged)


def test_what_is_loaded_is_what_was_checked(env: Env, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    etl = fill(env)
    before = take_backup(env, tmp_path)  # etl active
    env.vault.access.revoke_principal(env.admin, "etl")
    after = tmp_path / "after.backup"
    with private_file(after) as handle:
        env.vault.backups.backup(env.admin, handle)
    real = BackupService._copy_and_check

    def swap_after_check(self: BackupService, source: Path, copy: Any) -> Any:
        checked = real(self, source, copy)
        source.write_bytes(before.read_bytes())  # the file changes under the restore
        return checked

    monkeypatch.setattr(BackupService, "_copy_and_check", swap_after_check)
    restored = Vault(dataclasses.replace(env.settings, db_url=f"sqlite:///{tmp_path / 'r.db'}"))
    restored.backups.restore(after, accept_rollback=True)
    with pytest.raises(AccessDenied, match="revoked"):
        restored.secrets.inject(etl, "ml/team0/key0")


def test_restore_refuses_leftover_rows_without_a_vault(env: Env, tmp_path: Path) -> None:
    fill(env)
    backup = take_backup(env, tmp_path)
    target = f"sqlite:///{tmp_path / 'leftover.db'}"
    restored = Vault(dataclasses.replace(env.settings, db_url=target))
    restored.backups.restore(backup, accept_rollback=True)
    with engine_for(target).begin() as c:
        c.execute(text("DELETE FROM mlsecrets_vault"))
    with pytest.raises(InvalidInput, match="already holds vault data"):
        restored.backups.restore(backup)


def test_a_backup_whose_record_cannot_be_written_hands_over_nothing(env: Env) -> None:
    fill(env)
    with env.vault.core.transaction() as session:
        session.execute(text("DELETE FROM mlsecrets_audit_head"))
    out = io.StringIO()
    with pytest.raises(AuditError):
        env.vault.backups.backup(env.admin, out)
    assert out.getvalue() == ""
