"""The provider's metadata as Airflow reads it: valid against Airflow's own schema, with a
documentation link, a connection form that hides every raw field, an operator whose
templated fields the UI renders as what they are, and an ``airflow mlsecrets`` command whose
help lists its commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import airflow
import jsonschema
import pytest

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


def airflow_cli(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """``airflow ARGS`` in a fresh Airflow home, with none of this machine's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLSECRETS_"))}
    env.update(extra, AIRFLOW_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "airflow", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("args", [["--help"], ["-h"], []], ids=["--help", "-h", "no-args"])
def test_airflow_mlsecrets_help_lists_the_commands_under_its_own_name(
        tmp_path: Path, args: list[str]) -> None:
    got = airflow_cli(tmp_path, "mlsecrets", *args)
    assert got.returncode == 0, got.stdout + got.stderr[-3000:]
    usage = got.stdout.lstrip().splitlines()[0]
    assert usage.lower().startswith("usage: airflow mlsecrets "), usage
    commands = set(re.findall(r"^ {4}([a-z][a-z-]+)\b", got.stdout, re.MULTILINE))
    assert {"init", "secret", "principal", "grant", "audit", "rotate", "doctor"} <= commands


def test_an_airflow_mlsecrets_subcommand_is_named_as_typed(tmp_path: Path) -> None:
    got = airflow_cli(tmp_path, "mlsecrets", "secret", "--help")
    assert got.returncode == 0, got.stdout + got.stderr[-3000:]
    assert got.stdout.lower().startswith("usage: airflow mlsecrets secret "), got.stdout[:200]
    assert {"put", "get", "list"} <= set(re.findall(r"^ {4}([a-z]+)\b", got.stdout,
                                                   re.MULTILINE))


@pytest.mark.parametrize("args", [["--json", "init", "--dev"], ["init", "--dev", "--json"]],
                         ids=["before", "after"])
def test_airflow_mlsecrets_json_is_the_only_thing_on_stdout(tmp_path: Path,
                                                             args: list[str]) -> None:
    """--json before or after the command, and Airflow's console logs (the vault's
    migrations log through it) kept off stdout."""
    vault_home = tmp_path / "vault"
    got = airflow_cli(tmp_path / "airflow", "mlsecrets", *args, MLSECRETS_HOME=str(vault_home))
    assert got.returncode == 0, got.stdout + got.stderr[-3000:]
    assert json.loads(got.stdout)["token_file"] == str(vault_home / "admin.token")
