"""A DAG of one team (or of none) asks the secrets backend for another team's secret the
ways an attacker would: an id that climbs out of its namespace (``../``, URL-encoded,
backslashes), a ``team_name`` that smuggles a path or another team's name in another letter
case, the ``mlsecrets:`` any-path form. Each is refused or not served, and the team secret's
value appears nowhere; team-scope refusals are audited."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

from airflow_provider_mlsecrets.secrets.backend import TEAM_SCOPE, MLSecretsBackend
from tests.conftest import Env
from tests.test_teams import backend_for

SECRET = "postgres://u:team-a-canary@team-a.internal/db"
CLIMBS = [
    "../teams/team_a/connections/team_db",
    "../../teams/team_a/connections/team_db",
    "x/../../teams/team_a/connections/team_db",
    "%2e%2e/teams/team_a/connections/team_db",
    "%2E%2E%2Fteams%2Fteam_a%2Fconnections%2Fteam_db",
    "..%2fteams%2fteam_a%2fconnections%2fteam_db",
    "..\\teams\\team_a\\connections\\team_db",
    "/teams/team_a/connections/team_db",
    "./team_db",
    "team_db/..",
    "..",
]


@pytest.fixture
def backend(env: Env, tmp_path: Path) -> MLSecretsBackend:
    env.vault.secrets.put(env.admin, "teams/team_a/connections/team_db", SECRET.encode())
    env.vault.secrets.put(env.admin, "teams/team_a/variables/key", b"team-a-var-canary")
    return backend_for(env, tmp_path)


def served(backend: MLSecretsBackend, identifier: str, team: str | None) -> list[str]:
    """Everything a lookup of ``identifier`` by ``team`` hands back, refusals as ''."""
    got: list[str] = []
    for lookup in (backend.get_conn_value, backend.get_variable):
        try:
            got.append(lookup(identifier, team_name=team) or "")
        except AirflowSecretsBackendAccessDenied:
            got.append("")
    return got


@pytest.mark.parametrize("team", [None, "team_b", "team_a2"])
@pytest.mark.parametrize("identifier", CLIMBS)
def test_an_id_that_climbs_out_of_its_namespace_is_refused_by_the_grammar(
        backend: MLSecretsBackend, identifier: str, team: str | None) -> None:
    assert backend.path_for("connection", identifier) is None
    assert not any(served(backend, identifier, team))


@pytest.mark.parametrize("team", ["team_a/..", "../team_a", "team_b/../team_a",
                                  "team_b%2f..%2fteam_a", "team_a\x00", " team_a"])
def test_a_team_name_that_smuggles_a_path_is_refused_and_audited(
        env: Env, backend: MLSecretsBackend, team: str) -> None:
    with pytest.raises(AirflowSecretsBackendAccessDenied, match="team name"):
        backend.get_conn_value("team_db", team_name=team)
    principal, _, reason = [(r.principal, r.path, r.reason)
                            for r in env.vault.audit.tail(env.admin, 5)
                            if r.outcome == "denied"][-1]
    assert principal == TEAM_SCOPE and "team name" in reason


@pytest.mark.parametrize("team", ["TEAM_A", "Team_a"])
def test_another_letter_case_of_a_team_is_another_team(
        env: Env, backend: MLSecretsBackend, team: str) -> None:
    """Airflow team names are case-sensitive; the vault refuses (never serves) a name that
    differs from one it holds only in case, so no other source answers for it either."""
    with pytest.raises(AirflowSecretsBackendAccessDenied):
        backend.get_conn_value("team_db", team_name=team)
    assert env.vault.audit.tail(env.admin, 1)[0].outcome == "denied"


@pytest.mark.parametrize("team", [None, "team_b"])
def test_the_mlsecrets_form_does_not_reach_a_team_outside_a_task_request(
        backend: MLSecretsBackend, team: str | None) -> None:
    for key in ("mlsecrets:teams/team_a/connections/team_db",
                "mlsecrets:teams/team_a/variables/key"):
        assert backend.get_variable(key, team_name=team) is None


def test_nothing_of_team_a_was_served_to_anyone_else(
        env: Env, backend: MLSecretsBackend) -> None:
    for team in (None, "team_b", "team_a2", "tea", "team_"):
        assert backend.get_conn_value("team_db", team_name=team) is None
        assert backend.get_variable("key", team_name=team) is None
    allowed = [r.path for r in env.vault.audit.tail(env.admin, 100)
               if r.outcome == "allowed" and r.action == "secret.inject"]
    assert not any(p.startswith("teams/team_a/") for p in allowed)
