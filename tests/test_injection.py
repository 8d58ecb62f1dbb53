"""Credential injection through real ``airflow dags test`` runs, with canary values searched
for in the task output, the task log files and the metadata database."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.injection.redact import Redactor
from airflow_provider_mlsecrets.injection.references import Reference, parse_env, parse_reference
from tests.airflow_env import HARMLESS, PASSWORD, ROOT, AirflowEnv
from tests.airflow_env import airflow_env as airflow_env  # the fixture

API_KEY = "sk-inject-canary-91f3"
SHORT = "q7z"
ODD = 'p\u00e4"55w\u00f6rd-odd-canary\nsecond-line-canary'  # quote, non-ASCII, two lines


@pytest.fixture(scope="module")
def injected(airflow_env: AirflowEnv) -> AirflowEnv:
    vault, admin = airflow_env.vault, airflow_env.admin
    vault.secrets.put(admin, "ml/openai/api_key", API_KEY.encode())
    vault.secrets.put(admin, "ml/short", SHORT.encode())
    vault.secrets.put(admin, "other/not_granted", b"never-served-canary")
    vault.secrets.put(admin, "ml/odd", ODD.encode())
    vault.access.grant(admin, "airflow-pipeline", "ml/**", ["inject"])
    return airflow_env


def dags_test(air: AirflowEnv, dag_id: str, *extra: str,
              folder: Path = ROOT / "tests" / "dags") -> subprocess.CompletedProcess[str]:
    return air.run("dags", "test", dag_id, *extra, workers=True,
                   AIRFLOW__CORE__DAGS_FOLDER=str(folder),
                   MLSECRETS_TOKEN_FILE=str(air.pipeline_token))


def everything_written(air: AirflowEnv, got: subprocess.CompletedProcess[str]) -> bytes:
    files = [p for p in air.home.rglob("*") if p.is_file()]
    return (got.stdout + got.stderr).encode() + b"".join(p.read_bytes() for p in files)


def test_the_example_training_dag_gets_real_values_and_leaks_none(injected: AirflowEnv,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "proof"
    got = dags_test(injected, "mlsecrets_example_training", "-c",
                    json.dumps({"out_dir": str(out)}), folder=ROOT / "example_dags")
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    proof = json.loads((out / "proof.json").read_text())
    salt = proof["salt"]
    assert proof["sha256"] == {
        "OPENAI_API_KEY": hashlib.sha256((salt + API_KEY).encode()).hexdigest(),
        "DB_PASSWORD": hashlib.sha256((salt + PASSWORD).encode()).hexdigest()}
    written = everything_written(injected, got)  # logs and the metadata database
    assert API_KEY.encode() not in written and PASSWORD.encode() not in written
    db = sqlite3.connect(injected.home / "airflow.db")
    rendered = db.execute("SELECT rendered_fields FROM rendered_task_instance_fields "
                          "WHERE dag_id = 'mlsecrets_example_training'").fetchall()
    # rendered fields hold the references (Airflow further masks them by key name)
    assert rendered and '"OPENAI_API_KEY"' in rendered[0][0]
    assert API_KEY not in rendered[0][0] and PASSWORD not in rendered[0][0]
    records = injected.vault.audit.tail(injected.admin, 10)
    assert any(r.path == "ml/openai/api_key" and r.outcome == "allowed"
               and r.context.get("dag_id") == "mlsecrets_example_training" for r in records)


def test_printed_returned_and_raised_values_are_redacted_refused_and_absent(
        injected: AirflowEnv) -> None:
    leaky = dags_test(injected, "mlsecrets_inject_leaky")
    assert leaky.returncode != 0  # the return value held a secret: refused, task failed
    output = leaky.stdout + leaky.stderr
    assert "api key is *** short is ***" in output and "db password is ***" in output
    assert "contains an injected secret, so it was not stored" in output
    raises = dags_test(injected, "mlsecrets_inject_raises")
    assert raises.returncode != 0
    assert "the callable failed: it raised ValueError" in raises.stdout + raises.stderr
    for got in (leaky, raises):
        written = everything_written(injected, got)
        for canary in (API_KEY, SHORT + "\n", PASSWORD, HARMLESS):
            assert canary.encode() not in written, canary
    db = sqlite3.connect(injected.home / "airflow.db")
    xcoms = db.execute("SELECT value FROM xcom WHERE dag_id LIKE 'mlsecrets_inject_%'").fetchall()
    assert all(API_KEY.encode() not in bytes(v[0] or b"") for v in xcoms)


def test_the_child_gets_a_clean_environment(injected: AirflowEnv) -> None:
    got = dags_test(injected, "mlsecrets_inject_env")
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    db = sqlite3.connect(injected.home / "airflow.db")
    [(value,)] = db.execute("SELECT value FROM xcom WHERE dag_id = 'mlsecrets_inject_env' "
                            "AND key = 'return_value'").fetchall()
    result = json.loads(value if isinstance(value, str) else bytes(value).decode())
    names = set(result["names"])
    assert {"API_KEY", "SHORT", "DB_PASSWORD", "REGISTRY", "NOT_SECRET"} <= names
    assert not any(n.startswith(("AIRFLOW", "MLSECRETS")) for n in names)
    assert result["lengths"] == {"API_KEY": len(API_KEY), "SHORT": 3,
                                 "DB_PASSWORD": len(PASSWORD), "REGISTRY": len(HARMLESS)}


def test_a_denied_reference_fails_at_once_and_the_child_never_starts(injected: AirflowEnv,
                                                                     tmp_path: Path) -> None:
    marker = tmp_path / "child-started"
    got = dags_test(injected, "mlsecrets_inject_denied", "-c",
                    json.dumps({"marker": str(marker)}))
    assert got.returncode != 0
    output = got.stdout + got.stderr
    assert "AirflowFailException" in output and "secret:other/not_granted" in output
    assert "access denied" in output and "never-served-canary" not in output
    assert not marker.exists()
    assert len(re.findall(r"Executing .*mlsecrets_inject_denied", output)) <= 1  # no retries
    [*_, last] = injected.vault.audit.tail(injected.admin, 3)
    assert last.path == "other/not_granted" or any(
        r.path == "other/not_granted" and r.outcome == "denied"
        for r in injected.vault.audit.tail(injected.admin, 10))


@pytest.mark.parametrize(("text", "expected"), [
    ("secret:ml/openai/api_key", Reference("secret", "ml/openai/api_key")),
    ("secret:ml/db@3#password", Reference("secret", "ml/db", 3, "password")),
    ("conn:warehouse.password", Reference("conn", "warehouse", None, "password")),
    ("conn:warehouse", Reference("conn", "warehouse")),
    ("var:wandb_key", Reference("var", "wandb_key")),
])
def test_references_parse(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["sk-live-literal-value", "secret:../x", "secret:a@0",
                                  "conn:", "var:", "file:/etc/passwd", "secret:ml//x"])
def test_values_or_bad_references_are_refused_without_being_repeated(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_env({"X": text})
    assert text not in str(info.value) or text.startswith(("secret:", "conn:", "var:"))


def test_the_operator_refuses_a_literal_at_parse_time() -> None:
    from airflow_provider_mlsecrets.operators.inject import InjectSecretsOperator

    with pytest.raises(ValueError, match="not a reference") as info:
        InjectSecretsOperator(task_id="t", env={"K": "sk-live-literal"}, command=["true"])
    assert "sk-live-literal" not in str(info.value)
    with pytest.raises(ValueError, match="exactly one"):
        InjectSecretsOperator(task_id="t", env={"K": "var:x"})


def test_redactor_covers_short_values_and_overlaps() -> None:
    redact = Redactor(["abc", "abcdef", "x"])
    assert redact("key=abcdef short=abc one=x") == "key=*** short=*** one=x"
    assert redact.contains_secret('{"v": "abc"}') and not redact.contains_secret("ab")
    assert os.environ.get("API_KEY") is None  # nothing leaked into the test process


def test_the_taskflow_decorator(injected: AirflowEnv) -> None:
    got = dags_test(injected, "mlsecrets_inject_decorated")
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    assert "key in the decorated task: ***" in got.stdout + got.stderr
    assert API_KEY.encode() not in everything_written(injected, got)
    db = sqlite3.connect(injected.home / "airflow.db")
    [(value,)] = db.execute("SELECT value FROM xcom WHERE dag_id = 'mlsecrets_inject_decorated'"
                            " AND key = 'return_value'").fetchall()
    assert json.loads(value if isinstance(value, str) else bytes(value).decode()) == {
        "chars": len(API_KEY), "suffix": "ok"}


def test_a_sealed_value_opens_in_the_task_and_not_under_another_path(
        injected: AirflowEnv) -> None:
    cli = [sys.executable, "-m", "airflow_provider_mlsecrets.cli.main", "seal", "ml/sealed_key",
           "--stdin"]
    admin_token = injected.home.parent / "admin.token"
    admin_token.write_text(injected.admin.token or "")
    sealed = subprocess.run(cli, input="sealed-task-canary", capture_output=True, text=True,
                            env={**injected.env, "MLSECRETS_TOKEN_FILE": str(admin_token)},
                            timeout=120, check=True).stdout.strip()
    assert sealed.startswith("sealed:ml/sealed_key:mlsealed1.")
    ok = dags_test(injected, "mlsecrets_inject_sealed", "-c", json.dumps({"ref": sealed}))
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "sealed value has 18 chars" in ok.stdout + ok.stderr
    moved = sealed.replace("sealed:ml/sealed_key:", "sealed:ml/other_key:")
    bad = dags_test(injected, "mlsecrets_inject_sealed", "-c", json.dumps({"ref": moved}))
    assert bad.returncode != 0
    assert "could not be authenticated" in bad.stdout + bad.stderr
    for got in (ok, bad):
        assert b"sealed-task-canary" not in everything_written(injected, got)


def test_large_results_do_not_hang_and_odd_values_are_still_caught(injected: AirflowEnv,
                                                                   tmp_path: Path) -> None:
    big = dags_test(injected, "mlsecrets_inject_big", "-c",
                    json.dumps({"out_dir": str(tmp_path)}))
    assert big.returncode == 0, big.stdout[-3000:] + big.stderr[-3000:]
    assert (tmp_path / "cwd.txt").read_text() == str(tmp_path)  # cwd applies to callables
    output = big.stdout + big.stderr
    assert "odd value follows:" in output
    for line in ODD.splitlines():
        assert line not in output  # each line of a multi-line value is redacted
    odd = dags_test(injected, "mlsecrets_inject_big", "-c",
                    json.dumps({"out_dir": str(tmp_path), "return_odd": "yes"}))
    assert odd.returncode != 0  # JSON-escaped in the return value, still recognised
    assert "contains an injected secret" in odd.stdout + odd.stderr
    written = everything_written(injected, odd)
    assert json.dumps(ODD).encode()[1:-1] not in written and b"second-line-canary" not in written


def test_redactor_knows_json_escaped_forms() -> None:
    redact = Redactor(['p\u00e4"ss'])
    assert redact.contains_secret(json.dumps({"v": 'p\u00e4"ss'}), as_json=True)
    assert redact.contains_secret(json.dumps({"v": 'p\u00e4"ss'}, ensure_ascii=False),
                                  as_json=True)


def test_background_grandchildren_neither_hang_the_task_nor_outlive_it(
        injected: AirflowEnv, tmp_path: Path) -> None:
    import time

    marker = tmp_path / "grandchild-survived"
    got = dags_test(injected, "mlsecrets_inject_grandchild", "-c",
                    json.dumps({"marker": str(marker)}))
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    time.sleep(1)  # had the task waited for the 30-second sleepers, the markers would exist
    assert not marker.exists() and not Path(f"{marker}.cmd").exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(marker) not in ps.stdout  # the sleepers were stopped with the task


SUPERVISED_CALLABLE = r'''
import socket, sys
from airflow.sdk.execution_time.supervisor import _reopen_std_io_handles
from airflow_provider_mlsecrets.injection.redact import Redactor
from airflow_provider_mlsecrets.operators.inject import InjectSecretsOperator

def shout():
    import os
    print("callable says", os.environ["TOKEN"], flush=True)
    print("callable warns", file=sys.stderr, flush=True)
    return 42

pairs = [socket.socketpair() for _ in range(3)]
_reopen_std_io_handles(*(child for child, _ in pairs))  # fds 0-2 as the supervisor sets them
op = InjectSecretsOperator(task_id="t", env={"TOKEN": "var:token"}, python_callable=shout)
got = op._run_callable({"TOKEN": sys.argv[1]}, Redactor([sys.argv[1]]))
open(sys.argv[2], "w").write(repr(got))
'''


def test_a_callable_that_prints_works_with_the_supervisors_standard_streams(
        tmp_path: Path) -> None:
    """Under Airflow 3's supervisor, fds 1 and 2 belong to sys.stdout/sys.stderr alone; the
    forked child once closed them on replacing those streams, and died on its first print."""
    result = tmp_path / "result"
    got = subprocess.run([sys.executable, "-c", SUPERVISED_CALLABLE, API_KEY, str(result)],
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")})
    assert got.returncode == 0, (got.stdout + got.stderr)[-3000:]
    assert result.read_text() == "42"
    assert API_KEY not in got.stdout + got.stderr
