"""The secrets backend reads its kwargs as Airflow's own backends do (issue 15): lookup
patterns match in any letter case (amazon: ``re.IGNORECASE``), and an empty prefix is the
vault's top level (hashicorp and amazon: ``test_get_connection_with_empty_connections_path``)
while ``None`` turns a kind off; on a real vault, SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend
from tests.conftest import Env
from tests.test_teams import TEAM_CONN, backend_for, denials

CONN = "postgres://u:top-pw@top.internal/db"


def top_level_backend(env: Env, tmp_path: Path, **kwargs: str | None) -> MLSecretsBackend:
    """A backend whose principal may inject every path (``**``), so that only the
    backend's own prefixes and team scope decide what it serves."""
    backend = backend_for(env, tmp_path, **kwargs)
    env.vault.access.grant(env.admin, "airflow-pipeline", "**", ["inject"])
    return backend


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



# -- an empty prefix is the top level; None turns a kind off ---------------------------------
def test_an_empty_prefix_looks_ids_up_at_the_top_level(env: Env, tmp_path: Path) -> None:
    """hashicorp's and amazon's ``test_get_connection_with_empty_connections_path``."""
    put = env.vault.secrets.put
    put(env.admin, "top_db", CONN.encode())
    put(env.admin, "top_var", b"top-variable")
    backend = top_level_backend(env, tmp_path, connections_prefix="", variables_prefix="/",
                                team_prefix=None)
    assert backend.path_for("connection", "top_db") == "top_db"
    assert backend.get_conn_value("top_db") == CONN
    assert backend.get_variable("top_var") == "top-variable"
    assert backend.get_conn_value("elsewhere") is None  # not found: the next backend


def test_a_none_prefix_still_turns_a_kind_off(env: Env, tmp_path: Path) -> None:
    env.vault.secrets.put(env.admin, "connections/off_db", CONN.encode())
    backend = backend_for(env, tmp_path, connections_prefix=None)
    assert backend.get_conn_value("off_db") is None
    assert backend._vault is None


def test_a_top_level_id_never_reaches_under_the_team_root(env: Env, tmp_path: Path) -> None:
    """With the top level as the prefix, an id is a whole vault path: a global lookup of
    ``teams/...`` and a team's lookup of another team's folder are refused and audited,
    while a team still gets its own folder first and the top level after it."""
    put = env.vault.secrets.put
    put(env.admin, "teams/team_a/connections/team_db", TEAM_CONN.encode())
    put(env.admin, "teams/team_a/shared_db", TEAM_CONN.encode())
    put(env.admin, "shared_db", CONN.encode())
    backend = top_level_backend(env, tmp_path, connections_prefix="", variables_prefix="")
    assert backend.get_conn_value("shared_db") == CONN
    assert backend.get_conn_value("shared_db", team_name="team_a") == TEAM_CONN
    assert backend.get_conn_value("shared_db", team_name="team_b") == CONN
    for conn_id, team in [("teams/team_a/connections/team_db", None),
                          ("Teams/team_a/connections/team_db", None), ("teams", None),
                          ("teams/team_a/connections/team_db", "team_b"),
                          ("TEAMS/team_a/connections/team_db", "team_b")]:
        with pytest.raises(AirflowSecretsBackendAccessDenied, match="team"):
            backend.get_conn_value(conn_id, team_name=team)
        with pytest.raises(AirflowSecretsBackendAccessDenied, match="team"):
            backend.get_variable(conn_id, team_name=team)
        assert denials(env)[-1][1].lower() == conn_id.lower(), (conn_id, team)
    served = {r.path for r in env.vault.audit.tail(env.admin, 200)
              if r.principal == "airflow-pipeline" and r.outcome != "denied"}
    assert not any(p.lower().startswith("teams/team_a/connections") for p in served)


# -- docs/rotation.md's consumer of secret_asset, on the objects Airflow hands it -----------
def _doc_block(doc: Path, marker: str) -> str:
    """The ```python block of ``doc`` that holds ``marker``."""
    blocks = doc.read_text().split("```python\n")[1:]
    [block] = [b.split("```", 1)[0] for b in blocks if marker in b]
    return block


def test_the_rotation_docs_consumer_reads_its_event_once(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Airflow keys each triggering event under its asset and under every alias it came
    through (``mlsecrets-rotated``), whose objects have no ``uri``."""
    from airflow.sdk import AssetAlias
    from airflow.sdk.api.datamodels._generated import (
        AssetAliasReferenceAssetEventDagRun,
        AssetReferenceAssetEventDagRun,
    )
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from airflow_provider_mlsecrets.rotation.dag import ROTATED, secret_asset

    root = Path(__file__).resolve().parent.parent
    namespace: dict[str, object] = {"__name__": "rotation_doc_consumer"}
    exec(compile(_doc_block(root / "docs" / "rotation.md", "triggering_asset_events"),
                 "docs/rotation.md", "exec"), namespace)
    capsys.readouterr()

    def event(path: str, version: int) -> AssetEventDagRunReferenceResult:
        uri = secret_asset(path).uri
        return AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name=uri, uri=uri, extra={}),
            extra={"path": path, "version": version}, source_task_id="rotate",
            source_dag_id="mlsecrets_rotation", source_run_id="r1", source_map_index=-1,
            source_aliases=[AssetAliasReferenceAssetEventDagRun(name=ROTATED)],
            timestamp="2026-12-02T12:00:00Z")

    events = TriggeringAssetEventsAccessor.build(
        [event("connections/app_db", 2), event("connections/other_db", 7)])
    assert AssetAlias(ROTATED) in list(events)  # what the old example tripped on
    built = namespace["refresh_app_db_clients"]()  # type: ignore[operator]
    reconnect = built.get_task("reconnect").python_callable
    reconnect(triggering_asset_events=events)
    assert capsys.readouterr().out == "mlsecrets://connections/app_db now at version 2\n"
    reconnect(triggering_asset_events=TriggeringAssetEventsAccessor.build([]))  # manual run
    assert capsys.readouterr().out == ""


# -- a process that holds the vault but no token (issue 17: a notifier's connection) --------
def test_a_process_without_a_token_falls_through_only_where_the_vault_holds_nothing(
        env: Env, tmp_path: Path) -> None:
    """The API server's own lookups (an alert notifier's SMTP or HTTP connection, the UI's)
    come with no task identity; with no token configured they speak as no principal: a name
    the vault does not hold goes on to the next backend (recorded as not found), a name it
    holds is refused and stops the chain, so the metastore never serves it instead."""
    env.vault.secrets.put(env.admin, "connections/held_db", CONN.encode())
    s = env.settings
    backend = MLSecretsBackend(
        config_prefix=None, home=str(s.home), db_url=s.db_url,
        pkcs11_module=str(s.pkcs11_module), pkcs11_token=s.pkcs11_token,
        pkcs11_pin_file=str(s.pkcs11_pin_file), softhsm2_conf=str(s.softhsm2_conf),
        key_prefix=s.key_prefix)
    assert backend.get_conn_value("siem_alerts") is None
    with pytest.raises(AirflowSecretsBackendAccessDenied):
        backend.get_conn_value("held_db")
    records = env.vault.audit.tail(env.admin, 2)
    assert [(r.principal, r.path, r.outcome) for r in records] == [
        ("<airflow process>", "connections/siem_alerts", "not_found"),
        ("<airflow process>", "connections/held_db", "denied")]
    assert "give this process a token" in records[1].reason
    with pytest.raises(Exception, match="invalid principal name"):
        env.vault.access.create_principal(env.admin, "<airflow process>", "pipeline")
