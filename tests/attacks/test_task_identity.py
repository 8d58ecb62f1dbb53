"""A task that has the JWT signing key (a worker sharing the scheduler's environment) mints
Execution API tokens for other task instances and asks the API server for their DAG's
secrets over raw HTTP, the way issue 14's hostile DAG did. A token may speak for a DAG only
while it names that task instance's current, running try: a finished task's token, an
earlier try's, a workload token and one for no task instance at all are refused with a
final HTTP 403 (no 500, no traceback), audited as ``denied`` with the reason, and serve
nothing. (A token minted for a task that is running *now* cannot be told from the task's
own: only keeping the signing key off the workers closes that; see docs/airflow.md.)"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass

import httpx
import jwt
import pytest

from tests.airflow_env import DENIED_PASSWORD, MASKED_VALUE, Cluster
from tests.airflow_env import airflow_cluster as airflow_cluster  # the fixture

AUDIENCE = "urn:airflow.apache.org:task"
UNVERIFIED_TASK = "<unverified task>"


@dataclass(frozen=True)
class Targets:
    finished: str  # the (successful) task instance of a DAG granted masked_endpoint
    earlier_try: str  # try 1 of a retried task instance of a DAG granted masked_endpoint


@pytest.fixture(scope="module")
def targets(airflow_cluster: Cluster) -> Targets:
    masked = airflow_cluster.run_dag("mlsecrets_masked_values")
    denied = airflow_cluster.run_dag("mlsecrets_denied_lookups")
    with contextlib.closing(airflow_cluster.db()) as db:
        [(finished, state)] = db.execute(
            "SELECT id, state FROM task_instance WHERE dag_id = 'mlsecrets_masked_values' "
            "AND run_id = ?", (masked,)).fetchall()
        [earlier] = db.execute(
            "SELECT task_instance_id FROM task_instance_history WHERE dag_id = "
            "'mlsecrets_denied_lookups' AND run_id = ? AND task_id = 'variable' AND "
            "try_number = 1", (denied,)).fetchone()
    assert state == "success"
    return Targets(finished=str(uuid.UUID(str(finished))),
                   earlier_try=str(uuid.UUID(str(earlier))))


def forge(cluster: Cluster, sub: str, **claims: object) -> str:
    """A task token as the attacker mints it with the signing key it found."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "aud": AUDIENCE, "iat": now, "nbf": now,
                       "exp": now + 600, **claims}, cluster.jwt_secret, algorithm="HS512")


def ask(cluster: Cluster, route: str, token: str) -> httpx.Response:
    return httpx.get(f"{cluster.url}/execution/{route}",
                     headers={"authorization": f"Bearer {token}"}, timeout=60)


def refusals(cluster: Cluster, ti_id: str, path: str) -> list[tuple[str, str]]:
    return [(r.principal, r.reason) for r in cluster.vault.audit.tail(cluster.admin, 200)
            if r.action == "secret.inject" and r.outcome == "denied"
            and r.context.get("claimed_ti_id") == ti_id
            and r.context.get("requested_path") == path]


def assert_quiet(cluster: Cluster) -> None:
    server = cluster.output("api-server")
    assert "Traceback" not in server and "Exception in ASGI application" not in server
    assert MASKED_VALUE not in server and DENIED_PASSWORD not in server


@pytest.mark.parametrize("claims", [{"scope": "execution"}, {}],
                         ids=["execution-scope", "no-scope-claim"])
def test_a_finished_tasks_token_gets_nothing(airflow_cluster: Cluster, targets: Targets,
                                             claims: dict[str, str]) -> None:
    before = len(refusals(airflow_cluster, targets.finished, "variables/masked_endpoint"))
    got = ask(airflow_cluster, "variables/masked_endpoint",
              forge(airflow_cluster, targets.finished, **claims))
    assert got.status_code == 403, got.text
    assert MASKED_VALUE not in got.text
    assert got.json()["detail"]["reason"] == "access_denied"
    records = refusals(airflow_cluster, targets.finished, "variables/masked_endpoint")
    assert len(records) == before + 1  # exactly one record for the one attempt
    principal, reason = records[-1]
    assert principal == UNVERIFIED_TASK and "is success, not running" in reason
    assert_quiet(airflow_cluster)


def test_an_earlier_trys_token_gets_nothing(airflow_cluster: Cluster,
                                            targets: Targets) -> None:
    token = forge(airflow_cluster, targets.earlier_try, scope="execution")
    for route, path, value in (
            ("variables/masked_endpoint", "variables/masked_endpoint", MASKED_VALUE),
            ("connections/denied_db", "connections/denied_db", DENIED_PASSWORD)):
        got = ask(airflow_cluster, route, token)
        assert got.status_code == 403 and value not in got.text, got.text
        [(principal, reason)] = refusals(airflow_cluster, targets.earlier_try, path)
        assert principal == UNVERIFIED_TASK and "an earlier try (try 1" in reason
    assert_quiet(airflow_cluster)


def test_a_token_for_no_task_instance_gets_nothing(airflow_cluster: Cluster) -> None:
    made_up = str(uuid.uuid4())
    got = ask(airflow_cluster, "variables/mlsecrets:variables/masked_endpoint",
              forge(airflow_cluster, made_up, scope="execution"))
    assert got.status_code == 403 and MASKED_VALUE not in got.text, got.text
    [(principal, reason)] = refusals(airflow_cluster, made_up, "variables/masked_endpoint")
    assert principal == UNVERIFIED_TASK and "names no task instance" in reason
    assert_quiet(airflow_cluster)


def test_a_workload_token_is_not_a_running_task(airflow_cluster: Cluster,
                                                targets: Targets) -> None:
    """The token an executor hands a queued workload: Airflow refuses it on these routes
    before any lookup, so the vault is never asked."""
    got = ask(airflow_cluster, "variables/masked_endpoint",
              forge(airflow_cluster, targets.finished, scope="workload"))
    assert got.status_code == 403 and MASKED_VALUE not in got.text, got.text
    assert_quiet(airflow_cluster)
