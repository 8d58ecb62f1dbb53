"""Checkpoints written outside the database: to a local path, a ``file://`` URL and (within
one process) ``memory://``, through Airflow's ``ObjectStoragePath``; never over an existing
one; read back by ``audit verify --checkpoint``; and errors that say what to do next."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import Connection, text

from airflow_provider_mlsecrets.audit.checkpoint import ChainPoint, Checkpoint
from airflow_provider_mlsecrets.audit.publish import (
    CheckpointStoreError,
    destination,
    in_folder,
    read_checkpoint,
    write_checkpoint,
)
from airflow_provider_mlsecrets.errors import AuditChainBroken, ConfigurationError, InvalidInput
from tests.conftest import Env
from tests.test_audit import fill, rehash_from, tamper, vault_id
from tests.test_cli import Cli

POINT = Checkpoint(vault_id="v-test", created_at="2026-01-01T00:00:00.000000Z",
                   chains=(ChainPoint(chain=1, seq=7, hash=b"\x01" * 32, seal=b"\x02" * 32),))
NAME = re.compile(r"checkpoint-\d{8}T\d{6}\.\d{6}Z\.json")
S3FS = importlib.util.find_spec("s3fs") is not None


def memory_folder() -> str:
    return f"memory://mlsecrets-{uuid.uuid4().hex}/checkpoints/"


# -- memory:// through the Python API, with a real vault ---------------------------------
def test_a_memory_checkpoint_reads_back_verifies_and_catches_a_cut_tail(env: Env) -> None:
    fill(env)
    point = env.vault.audit.checkpoint(env.admin)
    url = memory_folder() + "cp.json"
    assert write_checkpoint(point, url) == url
    back = read_checkpoint(url)
    assert back.to_json() == point.to_json()  # the format is Checkpoint.to_json's, unchanged
    assert env.vault.audit.verify(env.admin, checkpoint=back).ok
    cut = point.chains[0].seq - 2
    vid = vault_id(env)

    def change(c: Connection) -> None:
        c.execute(text("DELETE FROM mlsecrets_audit WHERE seq > :s"), {"s": cut})
        rehash_from(c, vid, cut + 1)

    tamper(env, change)
    with pytest.raises(AuditChainBroken):
        env.vault.audit.verify(env.admin, checkpoint=read_checkpoint(url))


def test_a_memory_checkpoint_is_never_overwritten(env: Env) -> None:
    first = env.vault.audit.checkpoint(env.admin)
    url = memory_folder() + "cp.json"
    write_checkpoint(first, url)
    fill(env, 2)
    newer = env.vault.audit.checkpoint(env.admin)
    with pytest.raises(InvalidInput, match="already exists") as refused:
        write_checkpoint(newer, url)
    assert refused.value.exit_code == 2
    assert read_checkpoint(url).to_json() == first.to_json()


def test_each_publish_is_a_new_dated_file_in_the_folder() -> None:
    folder = memory_folder()
    early = in_folder(folder, datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=timezone.utc))
    late = in_folder(folder.rstrip("/"), datetime(2026, 1, 1, 12, 0, 0, 2,
                                                  tzinfo=timezone.utc))
    assert early.display == folder + "checkpoint-20260101T120000.000001Z.json"
    assert late.display == folder + "checkpoint-20260101T120000.000002Z.json"
    early.write(POINT)
    late.write(POINT)
    assert read_checkpoint(early.display) == POINT
    with pytest.raises(InvalidInput, match="already exists"):
        in_folder(folder, datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=timezone.utc))
    assert NAME.fullmatch(in_folder(folder).display.rsplit("/", 1)[1])


def test_what_is_not_a_checkpoint_is_refused_when_read() -> None:
    import fsspec  # type: ignore[import-untyped]

    folder = memory_folder()
    memory = fsspec.filesystem("memory")
    memory.pipe_file(folder[len("memory://") - 1:] + "big.json", b" " * (1 << 20) + b"{}")
    memory.pipe_file(folder[len("memory://") - 1:] + "other.json", b'{"format": "x"}')
    for name, message in (("missing.json", "does not exist"), ("big.json", "larger than"),
                          ("other.json", "not an audit checkpoint")):
        with pytest.raises(InvalidInput, match=message):
            read_checkpoint(folder + name)


# -- local paths and file:// -------------------------------------------------------------
@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_a_local_checkpoint_is_private_whole_and_never_replaced(tmp_path: Path,
                                                                as_url: bool) -> None:
    target = tmp_path / "new" / "folder" / "cp.json"
    where = f"file://{target}" if as_url else str(target)
    assert write_checkpoint(POINT, where) == where
    assert target.read_text() == POINT.to_json()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert read_checkpoint(where) == POINT
    newer = Checkpoint(vault_id="v-test", created_at="2026-02-01T00:00:00.000000Z",
                       chains=POINT.chains)
    with pytest.raises(InvalidInput, match="already exists"):
        write_checkpoint(newer, where)
    assert target.read_text() == POINT.to_json()
    assert os.listdir(target.parent) == ["cp.json"]  # no temporary file left behind


def test_a_symlink_planted_at_the_name_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    planted = tmp_path / "cp.json"
    planted.symlink_to(elsewhere)  # dangling: points where the attacker wants a write
    with pytest.raises(InvalidInput, match="already exists"):
        write_checkpoint(POINT, planted)
    out = destination(tmp_path / "race.json")  # checked absent; then planted before the write
    (tmp_path / "race.json").symlink_to(elsewhere)
    with pytest.raises(InvalidInput, match="already exists"):
        out.write(POINT)
    assert not elsewhere.exists()
    assert sorted(os.listdir(tmp_path)) == ["cp.json", "race.json"]


def test_a_folder_url_gets_dated_files(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    first = in_folder(f"file://{folder}/")
    first.write(POINT)
    [written] = os.listdir(folder)
    assert NAME.fullmatch(written) and first.display == f"file://{folder}/{written}"
    assert stat.S_IMODE((folder / written).stat().st_mode) == 0o600


# -- errors that say what to do next -----------------------------------------------------
def test_an_unknown_scheme_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"no filesystem serves nosuch://; give a local path"):
        destination("nosuch://bucket/cp.json")
    with pytest.raises(InvalidInput, match="no filesystem serves nosuch://"):
        read_checkpoint("nosuch://bucket/cp.json")


@pytest.mark.skipif(S3FS, reason="s3fs is installed here")
def test_a_missing_backend_names_the_package_to_install() -> None:
    with pytest.raises(ConfigurationError, match=r"apache-airflow-providers-amazon\[s3fs\]") as e:
        destination("s3://bucket/mlsecrets/cp.json")
    assert e.value.exit_code == 1
    with pytest.raises(ConfigurationError, match="connection named in the URL"):
        destination("s3://aws_default@bucket/mlsecrets/cp.json")  # through Airflow's registry


def test_a_folder_that_cannot_be_written_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CheckpointStoreError, match="may write there") as e:
        write_checkpoint(POINT, tmp_path / "a-file" / "cp.json")
    assert e.value.exit_code == 1 and str(tmp_path / "a-file") in str(e.value)


def test_a_password_in_the_url_never_reaches_a_message() -> None:
    with pytest.raises(ConfigurationError) as e:
        destination("sftp://ops:hunter2-canary@backup.internal/cp.json")
    assert "hunter2-canary" not in str(e.value) and "ops:***@backup.internal" in str(e.value)


# -- the CLI -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = Cli(tmp_path_factory.mktemp("cli-checkpoint") / "home")
    cli.ok("init", "--dev")
    return cli


def checkpoints_taken(cli: Cli) -> int:
    rows = json.loads(cli.ok("audit", "tail", "-n", "200", "--action", "audit.checkpoint",
                             "--json"))
    return len(rows)


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_cli_writes_a_checkpoint_that_verify_reads_back(cli: Cli, tmp_path: Path,
                                                        as_url: bool) -> None:
    target = tmp_path / "kept" / "cp.json"
    where = f"file://{target}" if as_url else str(target)
    out = cli.ok("audit", "checkpoint", "--out", where)
    assert f"checkpoint written to {where} (chain 1 at record" in out
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text())["format"] == "mlsecrets-audit-checkpoint-v1"
    verified = cli.ok("audit", "verify", "--checkpoint", where)
    assert "audit trail OK" in verified and "checkpoint matched" in verified
    before, taken = target.read_bytes(), checkpoints_taken(cli)
    again = cli("audit", "checkpoint", "--out", where)
    assert again.returncode == 2 and b"already exists" in again.stderr
    assert target.read_bytes() == before
    assert checkpoints_taken(cli) == taken  # refused before a checkpoint was taken


def test_cli_errors_exit_with_the_documented_codes(cli: Cli, tmp_path: Path) -> None:
    unknown = cli("audit", "checkpoint", "--out", "nosuch://bucket/cp.json")
    assert unknown.returncode == 2 and b"no filesystem serves nosuch://" in unknown.stderr
    (tmp_path / "a-file").write_text("")
    blocked = cli("audit", "checkpoint", "--out", str(tmp_path / "a-file" / "cp.json"))
    assert blocked.returncode == 1 and b"may write there" in blocked.stderr
    missing = cli("audit", "verify", "--checkpoint", f"file://{tmp_path}/none.json")
    assert missing.returncode == 2 and b"cannot read checkpoint" in missing.stderr
    if not S3FS:
        s3 = cli("audit", "checkpoint", "--out", "s3://bucket/cp.json")
        assert s3.returncode == 1 and b"apache-airflow-providers-amazon[s3fs]" in s3.stderr
