"""Airflow 3's multi-team mode on a real vault: ``team_name`` selects the team's own
namespace (``teams/<team>/connections/<id>``) with the global path as its fallback, and a
lookup with no team never reaches a team's secret; as the amazon and hashicorp providers'
multi-team tests do (``test_get_connection_value_multi_team``,
``test_global_caller_cannot_access_team_scoped_connection``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

from airflow_provider_mlsecrets.errors import AccessDenied
from airflow_provider_mlsecrets.secrets.backend import TEAM_SCOPE, MLSecretsBackend
from airflow_provider_mlsecrets.service import Caller
from tests.conftest import Env

GLOBAL_CONN = "postgres://u:global-pw@global.internal/db"
TEAM_CONN = "postgres://u:team-a-pw@team-a.internal/db"


def backend_for(env: Env, tmp_path: Path, **kwargs: str | None) -> MLSecretsBackend:
    """The backend as Airflow builds it from ``backend_kwargs``, with a pipeline token that
    may inject everything (so only the team scope decides)."""
    token = env.vault.access.create_principal(env.admin, "airflow-pipeline", "pipeline")
    for pattern in ("connections/**", "variables/**", "teams/**"):
        env.vault.access.grant(env.admin, "airflow-pipeline", pattern, ["inject"])
    token_file = tmp_path / "pipeline.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    s = env.settings
    return MLSecretsBackend(
        config_prefix=None, token_file=str(token_file), home=str(s.home), db_url=s.db_url,
        pkcs11_module=str(s.pkcs11_module), pkcs11_token=s.pkcs11_token,
        pkcs11_pin_file=str(s.pkcs11_pin_file), softhsm2_conf=str(s.softhsm2_conf),
        key_prefix=s.key_prefix, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def backend(env: Env, tmp_path: Path) -> MLSecretsBackend:
    put = env.vault.secrets.put
    put(env.admin, "connections/shared_db", GLOBAL_CONN.encode())
    put(env.admin, "teams/team_a/connections/team_db", TEAM_CONN.encode())
    put(env.admin, "teams/team_a/connections/shared_db", TEAM_CONN.encode())
    put(env.admin, "teams/team_a/variables/endpoint", b"team-a-endpoint")
    put(env.admin, "variables/endpoint", b"global-endpoint")
    put(env.admin, "teams/team_a2/connections/longer_db", b"postgres://u:a2-pw@a2/db")
    return backend_for(env, tmp_path)


def denials(env: Env) -> list[tuple[str, str, str]]:
    return [(r.principal, r.path, r.reason) for r in env.vault.audit.tail(env.admin, 50)
            if r.outcome == "denied"]


def test_a_team_caller_gets_its_teams_connection_and_variable(
        backend: MLSecretsBackend) -> None:
    assert backend.get_conn_value("team_db", team_name="team_a") == TEAM_CONN
    assert backend.get_conn_value("shared_db", team_name="team_a") == TEAM_CONN  # team first
    assert backend.get_variable("endpoint", team_name="team_a") == "team-a-endpoint"


def test_a_team_caller_falls_back_to_the_global_path(backend: MLSecretsBackend) -> None:
    assert backend.get_conn_value("shared_db", team_name="team_b") == GLOBAL_CONN
    assert backend.get_variable("endpoint", team_name="team_b") == "global-endpoint"
    assert backend.get_conn_value("nowhere", team_name="team_a") is None  # next backend


def test_a_global_caller_never_reaches_a_team_scoped_secret(
        env: Env, backend: MLSecretsBackend) -> None:
    assert backend.get_conn_value("team_db") is None
    assert backend.get_conn_value("shared_db") == GLOBAL_CONN
    assert backend.get_variable("endpoint") == "global-endpoint"
    paths = {r.path for r in env.vault.audit.tail(env.admin, 50)
             if r.principal == "airflow-pipeline"}
    assert not any(p.startswith("teams/") for p in paths)


def test_another_teams_secret_is_not_reachable(backend: MLSecretsBackend) -> None:
    assert backend.get_conn_value("team_db", team_name="team_b") is None
    assert backend.get_conn_value("longer_db", team_name="team_a") is None  # team_a2's


def test_a_team_whose_name_extends_the_callers_is_not_reachable(
        backend: MLSecretsBackend) -> None:
    teams = backend.teams
    assert teams is not None
    assert teams.outside("teams/team_a2/connections/longer_db", "team_a") is not None
    assert teams.outside("teams/team_a/connections/team_db", "team_a2") is not None
    assert teams.outside("teams/team_a/connections/team_db", "team_a") is None


def test_mlsecrets_paths_are_confined_to_the_callers_team(backend: MLSecretsBackend) -> None:
    """The any-path form ``mlsecrets:PATH`` (served only inside a task's Execution API
    request) goes through the same check before the vault is asked."""
    teams = backend.teams
    assert teams is not None
    assert teams.outside("ml/a/api_key", None) is None
    assert teams.outside("ml/a/api_key", "team_a") is None
    assert teams.outside("teams/team_a/ml/key", "team_a") is None
    for path, team in [("teams/team_a/ml/key", None), ("teams", None),
                       ("Teams/team_a/ml/key", None), ("TEAMS/team_a/x", "team_b"),
                       ("teams/team_b/ml/key", "team_a"), ("teams/TEAM_A/ml/key", "team_a"),
                       ("teams/team_a", "team_a")]:
        assert teams.outside(path, team) is not None, (path, team)


@pytest.mark.parametrize("team", ["ab", "team/../team_b", "team a", "x" * 51, "tëam",
                                  "team_a/..", "../team_b"])
def test_a_malformed_team_name_is_refused_and_audited(
        env: Env, backend: MLSecretsBackend, team: str) -> None:
    with pytest.raises(AirflowSecretsBackendAccessDenied, match="team name"):
        backend.get_conn_value("team_db", team_name=team)
    assert denials(env)[-1][0] == TEAM_SCOPE


def test_team_namespaces_can_be_turned_off(env: Env, tmp_path: Path) -> None:
    env.vault.secrets.put(env.admin, "connections/shared_db", GLOBAL_CONN.encode())
    backend = backend_for(env, tmp_path, team_prefix=None)
    assert backend.teams is None
    assert backend.get_conn_value("shared_db", team_name="team_a") == GLOBAL_CONN


def test_a_custom_team_prefix(env: Env, tmp_path: Path) -> None:
    env.vault.secrets.put(env.admin, "teams/by_team/team_a/connections/x", TEAM_CONN.encode())
    backend = backend_for(env, tmp_path, team_prefix="teams/by_team/{team}")
    assert backend.get_conn_value("x", team_name="team_a") == TEAM_CONN
    assert backend.get_conn_value("x") is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"team_prefix": "teams"}, "must hold"),
    ({"team_prefix": "{team}/secrets"}, "must hold"),
    ({"team_prefix": "teams/{team}/{team}"}, "must hold"),
    ({"team_prefix": "teams/../{team}"}, "team_prefix"),
    ({"team_prefix": "teams/{team}", "connections_prefix": "teams/connections"}, "overlaps"),
    ({"team_prefix": "teams/{team}", "variables_prefix": "Teams"}, "overlaps"),
    ({"team_prefix": "variables/teams/{team}"}, "overlaps"),
])
def test_a_team_prefix_that_overlaps_or_is_malformed_fails_at_construction(
        kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MLSecretsBackend(**kwargs)


def test_a_task_speaks_as_its_dag_then_its_team(env: Env) -> None:
    """The caller a task's Execution API request becomes: ``dag:D`` if a principal is bound
    to it, else ``team:T``."""
    env.vault.secrets.put(env.admin, "teams/team_a/connections/team_db", TEAM_CONN.encode())
    env.vault.access.create_principal(env.admin, "team:team_a", "pipeline")
    env.vault.access.grant(env.admin, "team:team_a", "teams/team_a/**", ["inject"])
    task = Caller(None, {"component": "test"}, verified=("dag:d", "team:team_a"))
    assert env.vault.secrets.inject(task, "teams/team_a/connections/team_db") == \
        TEAM_CONN.encode()
    other = Caller(None, {"component": "test"}, verified=("dag:d", "team:team_b"))
    with pytest.raises(AccessDenied):
        env.vault.secrets.inject(other, "teams/team_a/connections/team_db")
