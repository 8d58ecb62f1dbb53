"""``InjectSecretsOperator``: decrypted credentials in a child process's environment, and
nowhere else.

    InjectSecretsOperator(
        task_id="train",
        env={"OPENAI_API_KEY": "secret:ml/openai/api_key",
             "DB_PASSWORD": "conn:warehouse.password", "WANDB_KEY": "var:wandb_key"},
        command=["python", "train.py"],          # an argv list; shell=True to use a shell
    )

The DAG, its rendered fields and the metadata database hold references only. At execute
time the references are resolved (audited ``inject`` with the task's identity), every
value and derived form is registered with Airflow's masker, and the command or callable
runs in a child whose environment is a clean base plus the asked-for names; the task's
own environment is never changed. The child's output is redacted by our own filter as
well; a return value holding an injected value is refused; a failure's text never holds one.
A denied or missing reference fails the task at once, without retries.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess  # runs the task author's command, see _run_command # nosec B404
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider_mlsecrets._process import refuse_inspection
from airflow_provider_mlsecrets.errors import ConfigurationError, InvalidInput
from airflow_provider_mlsecrets.injection.redact import Redactor
from airflow_provider_mlsecrets.injection.references import parse_env
from airflow_provider_mlsecrets.injection.resolve import ResolutionError, ThroughAirflow, resolve

READER_GRACE_SECONDS = 5
BASE_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH")


class InjectSecretsOperator(BaseOperator):
    """Run ``command`` or ``python_callable`` with secrets injected into its environment.

    :param env: ``{ENV_NAME: reference}``; see :mod:`..injection.references`
    :param command: an argv list (or a string with ``shell=True``)
    :param python_callable: run in a forked child; its return value goes to XCom as JSON,
        unless it holds an injected value
    :param base_env: extra non-secret variables for the child (on top of PATH, HOME, …)
    :param mlsecrets_conn_id: the ``mlsecrets`` connection for ``secret:`` references
    """

    template_fields: Sequence[str] = ("env", "command", "base_env", "cwd", "op_args", "op_kwargs")
    # how the UI shows the rendered fields (references and names only: values never render)
    template_fields_renderers = {  # noqa: RUF012 - Airflow reads it from the class
        "env": "json", "command": "json", "base_env": "json", "op_args": "py",
        "op_kwargs": "py"}
    ui_color = "#e8f0e0"

    def __init__(self, *, env: dict[str, str],
                 command: Sequence[str] | str | None = None,
                 python_callable: Callable[..., Any] | None = None,
                 op_args: Sequence[Any] | None = None, op_kwargs: Mapping[str, Any] | None = None,
                 shell: bool = False, base_env: Mapping[str, str] | None = None,
                 cwd: str | None = None, mlsecrets_conn_id: str = "mlsecrets_default",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if (command is None) == (python_callable is None):
            raise ValueError("give exactly one of command and python_callable")
        if isinstance(command, str) and not shell:
            raise ValueError("a command string needs shell=True; prefer an argv list")
        if not isinstance(env, dict) or not env:
            raise ValueError("env must be a non-empty dict of {ENV_NAME: reference}")
        literal = {k: v for k, v in env.items() if "{{" not in str(v)}
        if literal:  # a typo fails the DAG file, not the run; templated ones wait for rendering
            try:
                parse_env(literal)
            except InvalidInput as exc:
                raise ValueError(str(exc)) from None
        self.env = env
        self.command = command
        self.python_callable = python_callable
        self.op_args = list(op_args or ())
        self.op_kwargs = dict(op_kwargs or {})
        self.shell = shell
        self.base_env = dict(base_env or {})
        self.cwd = cwd
        self.mlsecrets_conn_id = mlsecrets_conn_id
        self._child_pid: int | None = None

    def execute(self, context: Any) -> Any:
        resolved = resolve_env(self.env, self.mlsecrets_conn_id)
        redactor = Redactor(resolved.sensitive)
        child_env = {**clean_base_env(), **self.base_env, **resolved.env}
        if self.command is not None:
            self._run_command(child_env, redactor)
            return None
        if self.python_callable is None:
            raise AirflowException("give the operator a command or a python_callable")
        return self._run_callable(child_env, redactor)

    def on_kill(self) -> None:
        """The child and anything it started hold the secrets: they go with the task."""
        pid = getattr(self, "_child_pid", None)
        if pid is not None:
            _kill_group(pid)

    # -- the child ---------------------------------------------------------------------
    # The child leads a process group of its own, so that it and everything it starts can
    # be stopped together: on success once it exits (a grandchild left holding the output
    # pipe would keep the task waiting, and holds the secrets), on failure, time-out or kill.
    def _run_command(self, child_env: dict[str, str], redactor: Redactor) -> None:
        try:
            # the task author's own command, as BashOperator runs it; a shell
            # only when the author asked for one (shell=True), never built from a value
            process = subprocess.Popen(  # noqa: S603 # nosec B602 B603
                self.command, shell=self.shell, env=child_env, cwd=self.cwd,  # type: ignore[arg-type]
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        except OSError as exc:
            raise AirflowException(f"cannot start the command ({exc.strerror})") from None
        self._child_pid = process.pid
        if process.stdout is None:  # stdout=PIPE always gives one
            raise AirflowException("the command's output could not be read")
        reader = threading.Thread(target=self._log_output, args=(process.stdout, redactor))
        reader.start()
        try:
            code = process.wait()
        finally:
            _kill_group(process.pid)
            process.wait()
            reader.join(timeout=READER_GRACE_SECONDS)
            process.stdout.close()
        if code != 0:
            raise AirflowException(f"the command exited with status {code}")

    def _run_callable(self, child_env: dict[str, str], redactor: Redactor) -> Any:
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        read_fd, write_fd = os.pipe()
        child = context.Process(target=_child_main, args=(
            self.python_callable, self.op_args, self.op_kwargs, child_env, self.cwd, write_fd,
            send))
        child.start()
        self._child_pid = child.pid
        os.close(write_fd)
        send.close()
        # The output is read on its own thread while the result is received here, so a
        # large result cannot block a child whose output nobody reads (or the reverse).
        output = os.fdopen(read_fd, "rb")
        reader = threading.Thread(target=self._log_output, args=(output, redactor))
        reader.start()
        try:
            try:
                outcome, payload = receive.recv()
            except EOFError:
                outcome, payload = "died", ""
            child.join()
        finally:
            if child.pid is not None:
                _kill_group(child.pid)  # on a time-out or kill too, not only after success
            child.join(timeout=READER_GRACE_SECONDS)
            reader.join(timeout=READER_GRACE_SECONDS)
            output.close()
        if outcome == "died":
            raise AirflowException(f"the callable's process ended without a result (exit code "
                                   f"{child.exitcode})")
        if outcome != "ok":
            raise AirflowException(f"the callable failed: {payload} (details, redacted, are in "
                                   "the log above)")
        if redactor.contains_secret(payload, as_json=True):
            raise AirflowFailException(
                "the callable's return value contains an injected secret, so it was not "
                "stored; return a size, a flag or a salted hash instead")
        return json.loads(payload)

    def _log_output(self, stream: Any, redactor: Redactor) -> None:
        try:
            for line in stream:
                self.log.info("%s", redactor(line.decode("utf-8", "replace").rstrip("\n")))
        except (OSError, ValueError):
            pass  # the pipe was closed under us after the group was stopped


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def resolve_env(env: Mapping[str, str], mlsecrets_conn_id: str = "mlsecrets_default") -> Any:
    """Resolve ``{ENV_NAME: reference}`` at execute time: for this operator, the decorator,
    or another operator's environment (``resolve_env(refs).env`` for a pod's ``env_vars``).
    A bad, denied or missing reference fails the task without retries."""
    from airflow_provider_mlsecrets.hooks.vault import MLSecretsHook

    try:
        refs = parse_env(dict(env))
    except InvalidInput as exc:
        raise AirflowFailException(f"mlsecrets: {exc}") from None
    hook = MLSecretsHook(mlsecrets_conn_id=mlsecrets_conn_id)
    try:
        has_credential = hook.has_credential()
    except ConfigurationError as exc:  # a bad setting: no retry fixes it
        raise AirflowFailException(f"mlsecrets: {exc}") from None
    try:
        # a worker with no credential of its own (a service URL alone is none) asks
        # through Airflow, as its DAG, with the task's own identity
        route = hook if has_credential else ThroughAirflow()
        return resolve(refs, route)
    except ResolutionError as exc:
        if exc.retryable:  # an outage: the task's retries apply
            raise AirflowException(f"mlsecrets: {exc}") from None
        raise AirflowFailException(f"mlsecrets: {exc}") from None


def clean_base_env() -> dict[str, str]:
    return {k: os.environ[k] for k in BASE_ENV_NAMES if k in os.environ}


# The streams the forked child inherited, never collected (see _child_main).
_INHERITED_STREAMS: list[Any] = []


def _child_main(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any],
                env: dict[str, str], cwd: str | None, out_fd: int, send: Any) -> None:
    """In the forked child: our own session, environment and output; run, report, leave.
    The child is made undumpable before it takes the values, so no other process of the
    same Unix user reads its environment or memory (root and a later exec aside)."""
    refuse_inspection()  # inherited from the task process already; here as well, explicitly
    os.setsid()
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    # Under Airflow 3's task supervisor the task's sys.stdout/sys.stderr are the only owners
    # of fds 1 and 2 (opened with closefd=True): replacing them below would drop the last
    # reference and close the pipe just put on 1 and 2, so the child keeps them alive.
    _INHERITED_STREAMS.extend((sys.stdout, sys.stderr))
    # the task's sys.stdout may be Airflow's log redirector: the child writes to the pipe
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    report: tuple[str, str]
    try:
        if cwd:
            os.chdir(cwd)
        result = fn(*args, **kwargs)
        try:
            report = ("ok", json.dumps(result))
        except (TypeError, ValueError):
            print("mlsecrets: the return value is not JSON-serialisable", file=sys.stderr)
            report = ("error", "its return value is not JSON-serialisable")
    except BaseException as exc:
        traceback.print_exc()
        report = ("error", f"it raised {type(exc).__name__}")
    try:
        send.send(report)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
