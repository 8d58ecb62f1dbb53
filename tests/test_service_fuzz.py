"""The published OpenAPI schema, fuzzed (schemathesis) against a real ``mlsecrets serve``:
no input makes the service fail with a 5xx, and no answer but a granted read or inject ever
holds a stored value."""

from __future__ import annotations

import hypothesis
import schemathesis
from hypothesis import HealthCheck

from tests.airflow_env import airflow_env as airflow_env  # the fixture
from tests.test_service import API_KEY, Served
from tests.test_service import served as served  # the fixture

SERVE_LIMITS = ["--rate", "1000", "--burst", "1000"]  # fuzzing is not flooding
VALUE_ROUTES = ("/v1/read/", "/v1/inject/", "/v1/unseal/")


def test_no_input_breaks_the_service_or_leaks_a_value(served: Served) -> None:
    schema = schemathesis.openapi.from_url(f"{served.url}/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    calls = 0

    for operation in operations:
        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=25, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case) -> None:
            nonlocal calls
            for who in ("admin", "viewer", None):  # the most rights, few, none
                headers = {"authorization": f"Bearer {served.token(who)}"} if who else {}
                response = case.call(headers=headers)
                calls += 1
                where = (who, case.method, case.formatted_path)
                assert response.status_code < 500, (*where, response.text[:300])
                if who != "admin" or not case.formatted_path.startswith(VALUE_ROUTES):
                    assert API_KEY not in response.text, where

        fuzz()
    assert calls > 300
