"""A DAG of one team (or of none) asks the secrets backend for another team's secret the
ways an attacker would: an id that climbs out of its namespace (``../``, URL-encoded,
backslashes), a ``team_name`` that smuggles a path or another team's name in another letter
case, the ``mlsecrets:`` any-path form. Each is refused or not served, and the team secret's
value appears nowhere; team-scope refusals are audited."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

from airflow_provider_mlsecrets.secrets.backend import TEAM_SCOPE, MLSecretsBackend
from tests.airflow_env import BACKEND, Cluster, _free_port, control_plane, dev_vault
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


# -- through a real Airflow API server in multi-team mode --------------------------------

TEAM_KEY = "team-a-key-canary-4f0b"
TEAM_ENDPOINT = "team-a-endpoint-canary-9d2e"
GLOBAL_ENDPOINT = "global-endpoint-7a1c"
SHARED = "shared-global-value-3e8f"
DAGS = {
    "team_a": '''
@dag(dag_id="team_a_dag", **ARGS)
def team_a_dag():
    @task
    def own_variable():
        check(Variable.get("endpoint"), {team_endpoint!r})
    @task
    def own_path():
        check(Variable.get("mlsecrets:teams/team_a/ml/key"), {team_key!r})
    @task
    def global_fallback():
        check(Variable.get("shared"), {shared!r})
    own_variable(); own_path(); global_fallback()
team_a_dag()
''',
    "team_b": '''
@dag(dag_id="team_b_dag", **ARGS)
def team_b_dag():
    @task
    def by_path():
        Variable.get("mlsecrets:teams/team_a/ml/key")
    @task
    def by_climbing_path():  # the URL's dot segments are resolved before the server sees it
        Variable.get("mlsecrets:teams/team_b/../team_a/ml/key")
    @task
    def by_id():
        Variable.get("endpoint")
    by_path(); by_climbing_path(); by_id()
team_b_dag()
''',
    "global": '''
@dag(dag_id="global_dag", **ARGS)
def global_dag():
    @task
    def by_path():
        Variable.get("mlsecrets:teams/team_a/ml/key")
    @task
    def by_id():
        check(Variable.get("endpoint"), {global_endpoint!r})
    by_path(); by_id()
global_dag()
''',
}
HEADER = '''
import hashlib
from datetime import datetime
from airflow.sdk import Variable, dag, task
ARGS = dict(schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
            default_args={"retries": 0})
def check(value, digest):
    assert hashlib.sha256(value.encode()).hexdigest() == digest, "another value"
'''


def _digest(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture(scope="module")
def team_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The API server (the only process with the vault), scheduler and dag-processor in
    multi-team mode: bundles of team_a, team_b and of no team, each team with its own
    LocalExecutor. team_b's and the global DAG's principals may inject ``**``: only the
    team scope stands between them and team_a's secrets."""
    base = tmp_path_factory.mktemp("teams")
    vault_home = base / "vault"
    vault, admin = dev_vault(vault_home)
    for path, value in (("teams/team_a/ml/key", TEAM_KEY),
                        ("teams/team_a/variables/endpoint", TEAM_ENDPOINT),
                        ("variables/endpoint", GLOBAL_ENDPOINT), ("variables/shared", SHARED)):
        vault.secrets.put(admin, path, value.encode())
    for name, pattern in (("team:team_a", "teams/team_a/**"), ("team:team_a", "variables/**"),
                          ("team:team_b", "**"), ("dag:global_dag", "**")):
        if name not in {p.name for p in vault.access.list_principals(admin)}:
            vault.access.create_principal(admin, name, "pipeline")
        vault.access.grant(admin, name, pattern, ["inject"])
    bundles = []
    for bundle, source in DAGS.items():
        folder = base / "dags" / bundle
        folder.mkdir(parents=True)
        (folder / f"{bundle}_dag.py").write_text(HEADER + source.format(
            team_endpoint=_digest(TEAM_ENDPOINT), team_key=_digest(TEAM_KEY),
            shared=_digest(SHARED), global_endpoint=_digest(GLOBAL_ENDPOINT)))
        bundles.append({"name": f"{bundle}_bundle",
                        "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                        "kwargs": {"path": str(folder)},
                        **({} if bundle == "global" else {"team_name": bundle})})
    home = base / "airflow"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    jwt_secret = "test-only-" + secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLSECRETS_"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__MULTI_TEAM="True",
               AIRFLOW__CORE__EXECUTOR="LocalExecutor;team_a=LocalExecutor;team_b=LocalExecutor",
               AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST=json.dumps(bundles),
               AIRFLOW__CORE__PARALLELISM="4",
               AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
               AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{url}/execution/",
               AIRFLOW__API_AUTH__JWT_SECRET=jwt_secret,
               AIRFLOW__SECRETS__BACKEND=BACKEND,
               AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT="120",
               MLSECRETS_HOME=str(base / "no-vault-here"))
    for team in ("TEAM_A", "TEAM_B"):  # a team's executor reads its own settings only
        env[f"AIRFLOW__{team}___CORE__EXECUTION_API_SERVER_URL"] = f"{url}/execution/"
    cluster = Cluster(url=url, home=home, vault=vault, admin=admin, env=env,
                      jwt_secret=jwt_secret, logs={})
    cluster.airflow("db", "migrate")
    cluster.airflow("teams", "create", "team_a")
    cluster.airflow("teams", "create", "team_b")
    with control_plane(cluster, base, vault_home, port):
        _wait_for_dags(cluster, {"team_a_dag", "team_b_dag", "global_dag"})
        yield cluster


def _wait_for_dags(cluster: Cluster, dag_ids: set[str]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for name, process in cluster.processes.items():
            assert process.poll() is None, (
                f"airflow {name} exited: {cluster.output(name)[-3000:]}")
        with contextlib.closing(cluster.db()) as db:
            try:
                parsed = {r[0] for r in db.execute(
                    "SELECT dag_id FROM dag WHERE is_paused = 0").fetchall()}
            except sqlite3.OperationalError:
                parsed = set()
        if parsed >= dag_ids:
            try:
                with urllib.request.urlopen(f"{cluster.url}/api/v2/monitor/health",
                                            timeout=2):
                    return
            except OSError:
                pass
        time.sleep(1)
    pytest.fail(f"the multi-team cluster did not parse {sorted(dag_ids)} in 180 s: "
                + cluster.output("dag-processor")[-3000:])


def _states(cluster: Cluster, dag_id: str, run_id: str) -> dict[str, str]:
    with contextlib.closing(cluster.db()) as db:
        return dict(db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ? "
                               "AND run_id = ?", (dag_id, run_id)).fetchall())


def test_teams_through_a_real_api_server(team_cluster: Cluster) -> None:
    runs = {dag_id: team_cluster.run_dag(dag_id)
            for dag_id in ("team_a_dag", "team_b_dag", "global_dag")}
    assert _states(team_cluster, "team_a_dag", runs["team_a_dag"]) == {
        "own_variable": "success", "own_path": "success", "global_fallback": "success"}
    assert _states(team_cluster, "team_b_dag", runs["team_b_dag"]) == {
        "by_path": "failed", "by_climbing_path": "failed", "by_id": "success"}
    assert _states(team_cluster, "global_dag", runs["global_dag"]) == {
        "by_path": "failed", "by_id": "success"}
    records = [r for r in team_cluster.vault.audit.tail(team_cluster.admin, 200)
               if r.action == "secret.inject"]
    served = {(r.principal, r.path) for r in records if r.outcome == "allowed"}
    assert {("team:team_a", "teams/team_a/variables/endpoint"),
            ("team:team_a", "teams/team_a/ml/key"), ("team:team_a", "variables/shared"),
            ("dag:global_dag", "variables/endpoint"),
            ("team:team_b", "variables/endpoint")} <= served
    assert not any(p.startswith("teams/team_a/") for who, p in served if who != "team:team_a")
    refused = {(r.principal, r.path) for r in records if r.outcome == "denied"}
    assert {("dag:team_b_dag", "teams/team_a/ml/key"),
            ("dag:global_dag", "teams/team_a/ml/key")} <= refused
    server = team_cluster.output("api-server")
    assert "Traceback" not in server
    for value in (TEAM_KEY, TEAM_ENDPOINT):
        assert value not in server
        for log in (team_cluster.home / "logs").rglob("*"):
            assert not log.is_file() or value not in log.read_text(errors="replace")
