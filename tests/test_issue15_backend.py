"""The secrets backend reads its kwargs as Airflow's own backends do (issue 15): lookup
patterns match in any letter case (amazon: ``re.IGNORECASE``); on a real vault, SQLite and
PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend
from tests.conftest import Env
from tests.test_teams import backend_for

CONN = "postgres://u:top-pw@top.internal/db"


@pytest.mark.parametrize(("conn_id", "pattern", "looked_up"), [
    ("test", "test", True), ("test", ".*", True), ("test", "T.*", True),
    ("test", "dummy-pattern", False)])
def test_a_lookup_pattern_matches_in_any_letter_case(
        env: Env, tmp_path: Path, conn_id: str, pattern: str, looked_up: bool) -> None:
    """The amazon backends' lookup-pattern cases: ``("test", "T.*")`` is looked up."""
    env.vault.secrets.put(env.admin, f"connections/{conn_id}", CONN.encode())
    env.vault.secrets.put(env.admin, f"variables/{conn_id}", b"top-variable")
    backend = backend_for(env, tmp_path, connections_lookup_pattern=pattern,
                          variables_lookup_pattern=pattern)
    assert backend.get_conn_value(conn_id) == (CONN if looked_up else None)
    assert backend.get_variable(conn_id) == ("top-variable" if looked_up else None)
    if not looked_up:
        assert backend._vault is None  # a missed pattern touches nothing


def test_the_config_pattern_matches_in_any_letter_case() -> None:
    backend = MLSecretsBackend(config_lookup_pattern="^SQL_")
    assert backend.path_for("config", "sql_alchemy_conn") == "config/sql_alchemy_conn"

