"""The provider's metadata as Airflow reads it: valid against Airflow's own schema, with a
documentation link, a connection form that hides every raw field, and an operator whose
templated fields the UI renders as what they are."""

from __future__ import annotations

import json
from pathlib import Path

import airflow
import jsonschema

from airflow_provider_mlsecrets import get_provider_info
from airflow_provider_mlsecrets.operators.inject import InjectSecretsOperator


def test_the_provider_info_is_valid_for_airflow_and_links_its_documentation() -> None:
    info = get_provider_info()
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json")
                        .read_text())
    jsonschema.validate(info, schema)
    assert info["documentation-url"].startswith("https://")


def test_the_connection_form_hides_the_raw_extra_as_the_hashicorp_provider_does() -> None:
    [conn_type] = get_provider_info()["connection-types"]
    hidden = conn_type["ui-field-behaviour"]["hidden-fields"]
    assert {"host", "schema", "login", "password", "port", "extra"} <= set(hidden)
    assert set(conn_type["conn-fields"]) == {"token_file"}


def test_every_structured_template_field_has_a_renderer() -> None:
    renderers = InjectSecretsOperator.template_fields_renderers
    assert set(renderers) <= set(InjectSecretsOperator.template_fields)
    assert {"env", "command", "base_env", "op_args", "op_kwargs"} <= set(renderers)
