"""Rotation end to end through the ``mlsecrets`` command against real services: a PostgreSQL
role (its own scram-sha-256 server) behind an Airflow connection, and an HTTP key service
that really enforces which keys are valid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.pg_server import ScramPostgres
from tests.pg_server import scram_postgres as scram_postgres  # the fixture
from tests.test_cli import Cli
from tests.test_cli import cli as cli  # the fixture: a vault made by 'mlsecrets init --dev'

if TYPE_CHECKING:
    from tests.key_service import KeyService

pytest_plugins = ["tests.key_service"]

ROLE = "ml_feature_reader"


def psql_login(server: ScramPostgres, password: str) -> subprocess.CompletedProcess[str]:
    psql = shutil.which("psql")
    if psql is None:
        message = "psql is not installed"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run([psql, "-h", server.host, "-p", str(server.port), "-U", ROLE,
                           "-d", "postgres", "-w", "-tAc", "SELECT current_user"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_a_postgres_connection_rotated_end_to_end(cli: Cli, scram_postgres: ScramPostgres,
                                                  tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    work = tmp_path_factory.mktemp("pgrot")
    scram_postgres.create_role(ROLE, "first-password-1")
    admin_file = work / "admin.uri"
    admin_file.write_text(scram_postgres.admin_uri)
    cli.ok("secret", "put", "db/pg_admin", "--value-file", str(admin_file))
    conn = {"conn_type": "postgres", "host": scram_postgres.host, "port": scram_postgres.port,
            "login": ROLE, "password": "first-password-1", "schema": "postgres"}
    conn_file = work / "conn.json"
    conn_file.write_text(json.dumps(conn))
    config = work / "rotator.json"
    config.write_text(json.dumps({"via": "postgres",
                                  "config": {"admin_secret": "db/pg_admin"}}))
    out = cli.ok("secret", "put", "connections/feature_db", "--connection-json",
                 str(conn_file), "--rotate-every", "30d", "--rotator", "airflow_connection",
                 "--rotator-config", str(config), "--grace", "2s")
    assert "rotated by airflow_connection every 30d" in out
    assert psql_login(scram_postgres, "first-password-1").stdout.strip() == ROLE

    out = cli.ok("rotate", "connections/feature_db")
    assert "rotated" in out and "create,set,test,finish" in out
    rotated = json.loads(cli.ok("secret", "get", "--reason", "in a test", "connections/feature_db"))
    new_password = rotated["password"]
    assert new_password != "first-password-1" and rotated["login"] == ROLE
    assert new_password not in out
    login = psql_login(scram_postgres, new_password)
    assert login.returncode == 0 and login.stdout.strip() == ROLE, login.stderr

    time.sleep(2.1)  # the grace period passes; the next due run invalidates
    due = cli.ok("rotate", "--due")
    assert "invalidated" in due and "connections/feature_db" in due
    old = psql_login(scram_postgres, "first-password-1")
    assert old.returncode != 0 and "password authentication failed" in old.stderr
    assert psql_login(scram_postgres, new_password).returncode == 0

    versions = cli.ok("secret", "versions", "connections/feature_db")
    assert "retired" in versions and "current" in versions
    status = json.loads(cli.ok("--json", "rotation", "show", "connections/feature_db"))
    assert (status["rotations"], status["last_result"], status["step"]) == (1, "rotated",
                                                                             "idle")
    trail = cli.ok("audit", "tail", "-n", "40")
    for action in ("rotation.begin", "rotation.create", "rotation.set", "rotation.test",
                   "rotation.finish", "rotation.invalidate", "secret.inject"):
        assert action in trail, action
    assert new_password not in trail and "first-password-1" not in trail
    assert scram_postgres.stored_password(ROLE).startswith("SCRAM-SHA-256$")  # type: ignore[union-attr]


def test_an_http_key_rotated_with_a_grace_period(cli: Cli, key_service: KeyService,
                                                 tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    work = tmp_path_factory.mktemp("httprot")
    (work / "initial").write_text("initial")
    (work / "http.json").write_text(json.dumps(key_service.rotator_config()))
    cli.ok("secret", "put", "svc/api_key", "--value-file", str(work / "initial"))
    cli.ok("rotation", "set", "svc/api_key", "--every", "12h", "--rotator", "http",
           "--rotator-config", str(work / "http.json"), "--grace", "2s", "--next-due", "now")
    status = cli.ok("rotation", "status")
    assert "svc/api_key" in status and "http" in status

    out = cli("rotate", "--due")
    assert out.returncode == 0 and b"1 rotated, 0 invalidated, 0 cancelled, 0 failed" in out.stderr
    new_key = cli.ok("secret", "get", "--reason", "in a test", "svc/api_key")
    assert key_service.valid(new_key) and key_service.valid("initial")  # grace period
    time.sleep(2.1)
    cli.ok("rotate", "--due")
    assert key_service.valid(new_key) and not key_service.valid("initial")

    key_service.fail_next("/whoami", 1)  # the test step fails once: current is untouched
    failed = cli("rotate", "svc/api_key")
    assert failed.returncode == 1 and b"failed at test" in failed.stderr
    assert cli.ok("secret", "get", "--reason", "in a test", "svc/api_key") == new_key
    for key in key_service.issued_keys:
        assert key.encode() not in failed.stderr + failed.stdout
    shown = json.loads(cli.ok("--json", "rotation", "show", "svc/api_key"))
    assert shown["step"] == "set" and shown["failures"] == 1
    cli.ok("rotate", "svc/api_key")  # resumes at test with the key issued before
    third = cli.ok("secret", "get", "--reason", "in a test", "svc/api_key")
    assert third != new_key and key_service.valid(third)
    assert key_service.issued == 2
