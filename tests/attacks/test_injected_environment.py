"""Issue 14, item 5: another task of the same Unix user reads an injected child's
environment and memory through ``/proc``, as DAG b's task read DAG a's under LocalExecutor.

The victim is a real ``airflow dags test`` run of a DAG whose ``InjectSecretsOperator``
callable waits while it holds a canary from the vault. The attacker is another process of
the same Unix user with no privilege beyond it. Run as root (CI), the test empties the
capability bounding set of the victim, the attacker and a control alike: uid 0 without
CAP_SYS_PTRACE (what lets root read any process) and without a capability the other lacks
is exactly an ordinary user's position. The control, an unprotected process of that user,
shows that this attacker does read what is not protected.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.airflow_env import BACKEND, AirflowEnv
from tests.airflow_env import airflow_env as airflow_env  # the fixture

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="/proc and prctl are Linux's")

CANARY = "proc-environ-canary-6e1b"
CONTROL = "control-canary-0d4f"
_PR_CAPBSET_DROP = 24

DAG = '''
import json, os, time
from datetime import datetime
from pathlib import Path
from airflow.sdk import dag
from airflow_provider_mlsecrets.operators.inject import InjectSecretsOperator

WORK = Path({work!r})


def hold(mode: str) -> int:
    (WORK / "pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (WORK / "done").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(os.environ["CANARY"])


@dag(dag_id="mlsecrets_attack_victim_callable", schedule=None,
     start_date=datetime(2026, 1, 1), catchup=False)
def victim_callable():
    InjectSecretsOperator(task_id="hold", env={{"CANARY": "secret:attack/canary"}},
                          python_callable=hold, op_args=["callable"], retries=0)


@dag(dag_id="mlsecrets_attack_victim_command", schedule=None,
     start_date=datetime(2026, 1, 1), catchup=False)
def victim_command():
    InjectSecretsOperator(
        task_id="hold", env={{"CANARY": "secret:attack/canary"}}, retries=0,
        command=[{python!r}, "-c", "import os, time, pathlib; w = pathlib.Path({work!r}); "
                 "(w / 'pid').write_text(str(os.getpid())); d = time.monotonic() + 120\\n"
                 "while not (w / 'done').exists() and time.monotonic() < d: time.sleep(0.05)"])


victim_callable()
victim_command()
'''

ATTACKER = r'''
import json, os, re, sys
canary, targets = sys.argv[1].encode(), [int(p) for p in sys.argv[2:]]
report = {}
for pid in targets:
    seen = {}
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            seen["environ"] = "canary" if canary in f.read() else "read, no canary"
    except OSError as exc:
        seen["environ"] = type(exc).__name__
    try:
        found = False
        with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
            for line in maps:
                m = re.match(r"([0-9a-f]+)-([0-9a-f]+) r", line)
                if not m:
                    continue
                start, end = int(m.group(1), 16), int(m.group(2), 16)
                try:
                    mem.seek(start)
                    if canary in mem.read(end - start):
                        found = True
                        break
                except (OSError, OverflowError, ValueError):
                    continue
        seen["mem"] = "canary" if found else "read, no canary"
    except OSError as exc:
        seen["mem"] = type(exc).__name__
    report[str(pid)] = seen
print(json.dumps(report))
'''


def _same_user_without_privilege() -> None:
    """Before exec: as root, empty the capability bounding set, so that the exec'd program
    keeps uid 0 but holds no capability (CAP_SYS_PTRACE included): an ordinary user."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)


def attack(canary: str, pids: list[int]) -> dict[str, dict[str, str]]:
    got = subprocess.run([sys.executable, "-c", ATTACKER, canary, *map(str, pids)],
                         capture_output=True, text=True, timeout=120, check=False,
                         preexec_fn=_same_user_without_privilege)
    assert got.returncode == 0, got.stderr[-3000:]
    report: dict[str, dict[str, str]] = json.loads(got.stdout)
    return report


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


@pytest.fixture(scope="module")
def victim_dags(airflow_env: AirflowEnv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    vault, admin = airflow_env.vault, airflow_env.admin
    vault.secrets.put(admin, "attack/canary", CANARY.encode())
    vault.access.grant(admin, "airflow-pipeline", "attack/**", ["inject"])
    folder = tmp_path_factory.mktemp("victim-dags")
    return folder


@pytest.fixture
def control() -> Iterator[int]:
    """A process of the same user holding a canary in its environment, unprotected."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                               env={**os.environ, "CONTROL": CONTROL},
                               preexec_fn=_same_user_without_privilege)
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def run_victim(air: AirflowEnv, folder: Path, work: Path, dag_id: str) -> subprocess.Popen[str]:
    work.mkdir()
    (folder / "victim.py").write_text(DAG.format(work=str(work), python=sys.executable))
    env = {**air.env, "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
           "AIRFLOW__WORKERS__SECRETS_BACKEND": BACKEND,
           "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps(
               {"token_file": str(air.pipeline_token)}),
           "MLSECRETS_TOKEN_FILE": str(air.pipeline_token)}
    return subprocess.Popen([sys.executable, "-m", "airflow", "dags", "test", dag_id],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=_same_user_without_privilege)


def wait_for_pid(work: Path, victim: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 240
    while not (work / "pid").exists():
        if victim.poll() is not None or time.monotonic() > deadline:
            output = victim.communicate(timeout=30)[0] if victim.poll() is not None else ""
            pytest.fail(f"the victim DAG never started its child: {output[-4000:]}")
        time.sleep(0.1)
    time.sleep(0.2)  # the pid is written before the file is complete only in theory
    return int((work / "pid").read_text())


def finish(work: Path, victim: subprocess.Popen[str]) -> str:
    (work / "done").touch()
    try:
        output = victim.communicate(timeout=240)[0]
    finally:
        victim.kill()
    assert victim.returncode == 0, output[-4000:]
    return output


def test_a_same_user_process_cannot_read_the_callable_childs_environment_or_memory(
        airflow_env: AirflowEnv, victim_dags: Path, tmp_path: Path, control: int) -> None:
    work = tmp_path / "callable"
    victim = run_victim(airflow_env, victim_dags, work, "mlsecrets_attack_victim_callable")
    try:
        child = wait_for_pid(work, victim)
        tree = descendants(victim.pid)
        assert child in tree, "the callable runs in a child of the task"
        report = attack(CANARY, tree)
        baseline = attack(CONTROL, [control])
    finally:
        output = finish(work, victim)
    # the attacker can read what is not protected: the setup is not what refuses it
    assert baseline[str(control)]["environ"] == "canary", baseline
    # the injected child: neither its environment nor its memory
    assert report[str(child)] == {"environ": "PermissionError", "mem": "PermissionError"}, report
    # the task process that resolved the value holds it too, and is refused the same way
    assert report[str(victim.pid)] == {"environ": "PermissionError",
                                       "mem": "PermissionError"}, report
    assert not [pid for pid, seen in report.items() if "canary" in seen.values()], report
    assert CANARY not in output


def test_the_command_mode_after_exec_needs_a_separate_user_as_documented(
        airflow_env: AirflowEnv, victim_dags: Path, tmp_path: Path) -> None:
    """The limit docs/injection.md states: exec makes the command dumpable again, so a
    same-user process reads its environment. Only another Unix user (run_as_user, a pool
    of its own) closes that; the task process that resolved the value stays closed."""
    work = tmp_path / "command"
    victim = run_victim(airflow_env, victim_dags, work, "mlsecrets_attack_victim_command")
    try:
        command = wait_for_pid(work, victim)
        report = attack(CANARY, [command, victim.pid])
    finally:
        finish(work, victim)
    assert report[str(command)]["environ"] == "canary", report
    assert report[str(victim.pid)] == {"environ": "PermissionError",
                                       "mem": "PermissionError"}, report
