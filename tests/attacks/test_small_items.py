"""Issue 13, the smaller items: each attack done as the attacker does it (the real
``mlsecrets`` command, raw SQL as the database's owner, files on disk), on SQLite and
PostgreSQL where a database is involved.

1. a version row naming a MAC key (or a KEK that does not exist) as its ``kek_id``;
2. ``MLSECRETS_HOME`` created readable by others;
3. a principal's token saved world-readable by ``> FILE``;
4. the SoftHSM2 SO PIN kept beside the user PIN;
5. a deny on ``**`` that path-less actions (``audit tail`` …) ignored;
6. a refused ``backup`` and its documented exit code;
7. a sealed value that still opened after its secret was deleted.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from airflow_provider_mlsecrets.errors import AccessDenied, IntegrityError, InvalidInput
from airflow_provider_mlsecrets.keys.softhsm import DevToken
from airflow_provider_mlsecrets.service import Caller
from tests.conftest import TOKEN_LABEL, Database, Env, make_settings

MLSECRETS = [sys.executable, "-m", "airflow_provider_mlsecrets.cli.main"]
TAMPERING = b"altered outside the vault"


class Cli:
    """``mlsecrets`` in a child process against one vault (its own key prefix)."""

    def __init__(self, home: Path, values: dict[str, str]) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLSECRETS_")}
        self.env.update(values, MLSECRETS_HOME=str(home),
                        MLSECRETS_TOKEN_FILE=str(home / "admin.token"))
        self.prefix = values.get("MLSECRETS_KEY_PREFIX", "mlsecrets")
        self.db_url = values.get("MLSECRETS_DB_URL", f"sqlite:///{home / 'vault.db'}")

    def __call__(self, *args: str, stdin: bytes = b"", token_file: Path | None = None
                 ) -> subprocess.CompletedProcess[bytes]:
        env = dict(self.env)
        if token_file is not None:
            env["MLSECRETS_TOKEN_FILE"] = str(token_file)
        return subprocess.run([*MLSECRETS, *args], input=stdin, capture_output=True, env=env,
                              timeout=120, check=False)

    def ok(self, *args: str, **kwargs: object) -> str:
        result = self(*args, **kwargs)  # type: ignore[arg-type]
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode()

    def principal(self, name: str, role: str) -> Path:
        out = self.home / f"{name}.token"
        self.ok("principal", "create", name, "--role", role, "--out", str(out))
        return out

    def sql(self, *statements: str, **params: object) -> None:
        """Raw SQL as the database's owner: no vault code, no HSM."""
        engine = create_engine(self.db_url)
        try:
            with engine.begin() as connection:
                for statement in statements:
                    connection.execute(text(statement), params)
        finally:
            engine.dispose()


@pytest.fixture
def cli(hsm: DevToken, tmp_path: Path, database: Database) -> Cli:
    settings = make_settings(hsm, tmp_path / "home", database.url)
    cli = Cli(tmp_path / "home", {
        "MLSECRETS_DB_URL": database.url, "MLSECRETS_PKCS11_MODULE": hsm.module,
        "MLSECRETS_PKCS11_TOKEN": TOKEN_LABEL, "MLSECRETS_PKCS11_PIN_FILE": str(hsm.pin_file),
        "MLSECRETS_SOFTHSM2_CONF": str(hsm.conf), "MLSECRETS_KEY_PREFIX": settings.key_prefix})
    cli.ok("init")
    return cli


# -- 1. a kek_id naming a MAC key, or a KEK that does not exist -------------------------------
def _version_names(cli: Cli, kek_id: str, *, listed: str | None = None) -> None:
    """Point every stored version at ``kek_id``; with ``listed``, also list that label in the
    key table in state ``listed``, as an owner who read formats.md would."""
    statements = ["UPDATE mlsecrets_secret_versions SET kek_id = :kek"]
    if listed is not None:
        statements.append("INSERT INTO mlsecrets_keks (version, label, state, created_at) "
                          "VALUES (99, :kek, :state, CURRENT_TIMESTAMP)")
    cli.sql(*statements, kek=kek_id, state=listed)


@pytest.mark.parametrize("mac", ["audit-mac", "token-mac", "integrity-mac"])
@pytest.mark.parametrize("listed", [None, "retired", "current"])
def test_a_version_naming_a_mac_key_is_tampering_not_a_crash(cli: Cli, mac: str,
                                                            listed: str | None) -> None:
    cli.ok("secret", "put", "ml/k", "--stdin", stdin=b"value")
    if listed == "current":  # the real KEK stays current too: the label is what is tested
        cli.sql("UPDATE mlsecrets_keks SET state = 'retired'")
    _version_names(cli, f"{cli.prefix}-{mac}", listed=listed)
    result = cli("secret", "get", "--reason", "in a test", "ml/k")
    assert result.returncode == 5, result.stderr.decode()
    assert result.stdout == b"" and TAMPERING in result.stderr
    assert b"internal error" not in result.stderr


def test_a_version_naming_a_mac_key_fails_closed_once_that_key_is_in_use(env: Env) -> None:
    """A long-running process (the API server) has already used the audit MAC key when the
    forged row is read: the label never reaches the HSM as if it were an AES key."""
    env.vault.secrets.put(env.admin, "ml/k", b"value")
    prefix = env.settings.key_prefix
    with env.vault.core.transaction() as session:
        session.execute(text("UPDATE mlsecrets_secret_versions SET kek_id = :k"),
                        {"k": f"{prefix}-audit-mac"})
        session.execute(text("INSERT INTO mlsecrets_keks (version, label, state, created_at) "
                             "VALUES (99, :k, 'retired', CURRENT_TIMESTAMP)"),
                        {"k": f"{prefix}-audit-mac"})
    env.vault.audit.count(env.admin)  # seals a record: the audit MAC key is now in use here
    for _ in range(2):
        with pytest.raises(IntegrityError, match="altered outside the vault"):
            env.vault.secrets.read(env.admin, "ml/k", reason="in a test")
    records = env.vault.audit.tail(env.admin, 3)
    assert [(r.action, r.outcome) for r in records if r.action == "secret.read"] == [
        ("secret.read", "error")] * 2


@pytest.mark.parametrize("listed", [None, "retired"])
def test_a_version_naming_a_kek_the_hsm_lacks_is_tampering(cli: Cli, listed: str | None) -> None:
    cli.ok("secret", "put", "ml/k", "--stdin", stdin=b"value")
    _version_names(cli, f"{cli.prefix}-kek-99", listed=listed)
    result = cli("secret", "get", "--reason", "in a test", "ml/k")
    assert result.returncode == 5, result.stderr.decode()
    assert TAMPERING in result.stderr and b"kek-99" in result.stderr


@pytest.mark.parametrize("label", ["other-kek-1", "{prefix}-kek-01", "{prefix}-kek-1 ",
                                   "{prefix}-kek-"])
def test_a_version_naming_no_kek_of_this_vault_is_tampering(cli: Cli, label: str) -> None:
    cli.ok("secret", "put", "ml/k", "--stdin", stdin=b"value")
    _version_names(cli, label.format(prefix=cli.prefix), listed="retired")
    result = cli("secret", "get", "--reason", "in a test", "ml/k")
    assert result.returncode == 5 and TAMPERING in result.stderr, result.stderr.decode()


def test_a_key_table_naming_a_mac_key_as_current_refuses_writes(cli: Cli) -> None:
    cli.sql("UPDATE mlsecrets_keks SET label = :kek", kek=f"{cli.prefix}-audit-mac")
    for args in (("secret", "put", "ml/k", "--stdin"), ("seal", "ml/k", "--stdin")):
        result = cli(*args, stdin=b"value")
        assert result.returncode == 5, result.stderr.decode()
        assert TAMPERING in result.stderr


def test_key_rotation_leaves_a_row_naming_a_mac_key_alone(cli: Cli) -> None:
    cli.ok("secret", "put", "ml/k", "--stdin", stdin=b"value")
    _version_names(cli, f"{cli.prefix}-audit-mac", listed="retired")
    result = cli("key", "rotate")
    assert result.returncode == 5, result.stderr.decode()
    assert b"did NOT authenticate" in result.stdout and b"ml/k v1" in result.stdout


# -- 2 and 4. init --dev: a private home, and no SO PIN on disk -------------------------------
def test_init_dev_creates_a_private_home_and_keeps_no_so_pin(tmp_path: Path) -> None:
    dev_home = tmp_path / "not-yet" / "home"  # neither it nor its parent exists
    cli = Cli(dev_home, {})
    cli.ok("init", "--dev")
    assert stat.S_IMODE(dev_home.stat().st_mode) == 0o700
    kept = {p.name for p in dev_home.iterdir()}
    assert kept == {"admin.token", "config.json", "pkcs11.pin", "softhsm", "vault.db",
                    "vault.db-lock"}, kept
    for name in kept - {"softhsm"}:
        assert stat.S_IMODE((dev_home / name).stat().st_mode) == 0o600, name
    assert "pkcs11.so-pin" not in json.dumps(json.loads((dev_home / "config.json").read_text()))
    # the user PIN that was kept still works: the token is usable
    assert json.loads(cli.ok("status", "--json"))["you"] == "admin (security_engineer)"


def test_init_warns_about_a_home_others_can_read(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    (home / "pkcs11.so-pin").write_text("left by an earlier release\n")
    result = Cli(home, {})("init", "--dev")
    assert result.returncode == 0, result.stderr.decode()
    assert b"has mode 0755" in result.stderr and b"chmod 700" in result.stderr
    assert b"pkcs11.so-pin was written by an earlier release" in result.stderr


# -- 3. principal create --out: 0600 from the first byte, never over a file ------------------
def test_principal_create_out_writes_a_private_token(cli: Cli) -> None:
    out = cli.home / "etl.token"
    printed = cli.ok("principal", "create", "etl", "--role", "pipeline", "--out", str(out))
    assert "mls_" not in printed and str(out) in printed
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(cli.ok("status", "--json", token_file=out))["you"] == "etl (pipeline)"


def test_principal_create_out_refuses_an_existing_file_or_symlink(cli: Cli) -> None:
    taken = cli.home / "taken.token"
    taken.write_text("keep me\n")
    victim = cli.home / "victim"
    victim.write_text("keep me too\n")
    planted = cli.home / "planted.token"
    planted.symlink_to(victim)
    for i, target in enumerate((taken, planted)):
        result = cli("principal", "create", f"p{i}", "--role", "pipeline", "--out", str(target))
        assert result.returncode == 2 and b"--force" in result.stderr, result.stderr.decode()
    assert taken.read_text() == "keep me\n" and victim.read_text() == "keep me too\n"
    names = {p["name"] for p in json.loads(cli.ok("principal", "list", "--json"))}
    assert not names & {"p0", "p1"}  # a refused file costs no principal


def test_principal_create_out_force_replaces_and_a_refusal_leaves_no_file(cli: Cli) -> None:
    out = cli.home / "etl.token"
    out.write_text("old\n")
    out.chmod(0o644)
    cli.ok("principal", "create", "etl", "--role", "pipeline", "--out", str(out), "--force")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_text().startswith("mls_")
    assert cli("principal", "create", "x", "--role", "pipeline", "--force").returncode == 2
    viewer = cli.principal("viewer", "viewer")
    denied = cli.home / "denied.token"
    result = cli("principal", "create", "y", "--role", "pipeline", "--out", str(denied),
                 token_file=viewer)
    assert result.returncode == 3 and not denied.exists()


# -- 5. a deny on any pattern refuses the actions that have no path ---------------------------
AUDIT_COMMANDS = [("audit", "tail"), ("audit", "export"), ("audit", "verify"),
                  ("audit", "checkpoint", "--out", "{home}/cp.json"),
                  ("audit", "verify-export", "{home}/export.jsonl")]


@pytest.mark.parametrize("pattern", ["**", "**/**", "team-b/**"])
def test_an_auditor_denied_audit_anywhere_cannot_read_the_trail(cli: Cli, pattern: str) -> None:
    auditor = cli.principal("alice", "auditor")
    (cli.home / "export.jsonl").write_text("{}\n")
    assert cli("audit", "tail", token_file=auditor).returncode == 0
    cli.ok("grant", "--deny", "alice", pattern, "audit")
    for command in AUDIT_COMMANDS:
        result = cli(*(c.format(home=cli.home) for c in command), token_file=auditor)
        assert result.returncode == 3, (command, result.stderr.decode())
        assert f"explicit deny of audit on {pattern}".encode() in result.stderr
    assert not (cli.home / "cp.json").exists()
    tail = json.loads(cli.ok("audit", "tail", "--json", "-n", "5"))
    assert [r["outcome"] for r in tail if r["principal"] == "alice"][-1] == "denied"


def _every_pathless_action(env: Env, caller: Caller) -> dict[str, object]:
    """Each service action that concerns no one path, by the capability it needs."""
    vault = env.vault
    return {
        "audit.tail": lambda: vault.audit.tail(caller),
        "audit.export": lambda: list(vault.audit.export(caller)),
        "audit.count": lambda: vault.audit.count(caller),
        "audit.verify": lambda: vault.audit.verify(caller),
        "audit.checkpoint": lambda: vault.audit.checkpoint(caller),
        "audit.verify_export": lambda: vault.audit.verify_export(caller, []),
        "key.list": lambda: vault.key_list(caller),
        "key.pending": lambda: vault.keys.pending(caller),
        "key.rotate": lambda: vault.keys.start(caller),
        "principal.list": lambda: vault.access.list_principals(caller),
        "policy.show": lambda: vault.access.policy(caller, None),
    }


@pytest.mark.parametrize("pattern", ["**", "**/**", "a/b"])
def test_a_deny_on_any_pattern_refuses_every_pathless_action(env: Env, pattern: str) -> None:
    needs = {"audit": ["audit.tail", "audit.export", "audit.count", "audit.verify",
                       "audit.checkpoint", "audit.verify_export"],
             "list": ["key.list", "key.pending"], "rotate": ["key.rotate"],
             "grant": ["principal.list", "policy.show"]}
    for capability, actions in needs.items():
        name = f"se-{capability}"
        caller = env.principal(name, "security_engineer")
        env.vault.access.grant(env.admin, name, pattern, [capability], deny=True)
        run = _every_pathless_action(env, caller)
        for action in actions:
            with pytest.raises(AccessDenied, match=f"explicit deny of {capability}|fenced"):
                run[action]()  # type: ignore[operator]
        # a deny of one capability leaves the path-less actions of another alone
        run["key.list" if capability != "list" else "audit.count"]()  # type: ignore[operator]


# -- 6. a refused backup exits 3, as documented ----------------------------------------------
def test_a_refused_backup_exits_3(cli: Cli) -> None:
    auditor = cli.principal("alice", "auditor")
    fenced = cli.principal("se2", "security_engineer")
    cli.ok("grant", "--deny", "se2", "ml/**", "read")
    for token in (auditor, fenced):
        out = cli.home / "backup.jsonl"
        result = cli("backup", "--out", str(out), token_file=token)
        assert result.returncode == 3 and b"access denied" in result.stderr, result.stderr
        assert not out.exists()
    cli_md = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    assert "no explicit deny (exit 3 otherwise)" in cli_md


# -- 7. a sealed value does not open once its secret is deleted ------------------------------
def _sealed(cli: Cli, path: str, value: bytes) -> str:
    reference = cli.ok("seal", path, "--stdin", stdin=value).strip()
    assert reference.startswith(f"sealed:{path}:")
    return reference.removeprefix(f"sealed:{path}:")


def test_a_sealed_value_follows_its_secret(cli: Cli) -> None:
    from airflow_provider_mlsecrets.service import Vault
    from airflow_provider_mlsecrets.settings import Settings

    cli.ok("secret", "put", "ml/hf/token", "--stdin", stdin=b"stored")
    token = _sealed(cli, "ml/hf/token", b"sealed-value")
    loose = _sealed(cli, "ml/nothing/stored", b"loose")
    task = cli.principal("etl", "pipeline")
    cli.ok("grant", "etl", "ml/**", "inject")
    vault = Vault(Settings.load(cli.env))  # the task's side, in this process
    etl = Caller(task.read_text().strip(), {"component": "task"})
    assert vault.secrets.unseal(etl, "ml/hf/token", token) == b"sealed-value"

    cli.ok("secret", "delete", "ml/hf/token")  # the security engineer withdraws the name
    with pytest.raises(AccessDenied, match="deleted"):
        vault.secrets.unseal(etl, "ml/hf/token", token)
    refused = cli("seal", "ml/hf/token", "--stdin", stdin=b"again")
    assert refused.returncode == 2 and b"undelete" in refused.stderr

    cli.ok("secret", "undelete", "ml/hf/token")
    assert vault.secrets.unseal(etl, "ml/hf/token", token) == b"sealed-value"
    cli.ok("secret", "destroy", "ml/hf/token", "--version", "1")  # no current version left
    with pytest.raises(AccessDenied, match="no current version"):
        vault.secrets.unseal(etl, "ml/hf/token", token)
    with pytest.raises(InvalidInput):
        vault.secrets.seal(Caller((cli.home / "admin.token").read_text().strip(), {}),
                           "ml/hf/token", b"x")
    # a path that never held a secret is only a name: its sealed value still opens
    assert vault.secrets.unseal(etl, "ml/nothing/stored", loose) == b"loose"
    tail = json.loads(cli.ok("audit", "tail", "--json", "--action", "secret.unseal"))
    assert [r["outcome"] for r in tail] == ["allowed", "denied", "allowed", "denied", "allowed"]
