"""What the doctor looks at: Airflow's configuration as this process sees it (the API
server's host), this process's environment, and, when it can be read, the metadata
database's DAGs. Reading never writes: no database file is created, no command run."""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# executors whose tasks all run as one Unix user beside the scheduler (one trust domain)
SHARED_USER_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})
# executors that route tasks to worker pools by queue
QUEUE_EXECUTORS = frozenset({"CeleryExecutor", "EdgeExecutor"})
# executors that give every task a container of its own
ISOLATING_EXECUTORS = frozenset({"KubernetesExecutor", "AwsEcsExecutor", "AwsBatchExecutor",
                                 "AwsLambdaExecutor"})


@dataclass(frozen=True)
class Executor:
    name: str  # the class name, e.g. CeleryExecutor
    alias: str | None
    module_path: str
    team: str | None
    default: bool  # the first one listed for its team: tasks that name none run on it


@dataclass(frozen=True)
class DagInfo:
    dag_id: str
    team: str | None
    executors: frozenset[str]  # class names
    queues: frozenset[str]
    run_as_users: frozenset[str]  # "" for tasks without one


@dataclass
class Deployment:
    environ: Mapping[str, str]
    config_file: Path | None
    executors: list[Executor] = field(default_factory=list)
    executor_error: str | None = None
    dags: list[DagInfo] | None = None
    dags_error: str | None = None
    _raw: configparser.ConfigParser | None = None

    def conf(self, section: str, key: str, *, team: str | None = None) -> str | None:
        """An option as Airflow resolves it (environment, file, ``_cmd``, default)."""
        from airflow.configuration import conf

        kwargs: dict[str, Any] = {"team_name": team} if team else {}
        value = conf.get(section, key, fallback=None, **kwargs)
        return str(value) if value not in (None, "") else None

    def flag(self, section: str, key: str) -> bool:
        from airflow.configuration import conf

        return bool(conf.getboolean(section, key, fallback=False))

    def in_file(self, section: str, key: str) -> bool:
        """Whether the configuration file itself sets ``key`` (without evaluating it)."""
        if self._raw is None:
            self._raw = configparser.ConfigParser(interpolation=None, strict=False)
            if self.config_file is not None:  # unreadable: the calling check says so
                self._raw.read(self.config_file, encoding="utf-8")
        return bool(self._raw.has_option(section, key) and self._raw.get(section, key).strip())

    def executor_kinds(self) -> set[str]:
        return {e.name for e in self.executors}


def inspect(environ: Mapping[str, str] | None = None, *, read_dags: bool = True) -> Deployment:
    from airflow import configuration

    config_file = Path(configuration.AIRFLOW_CONFIG)
    deployment = Deployment(environ=dict(os.environ if environ is None else environ),
                            config_file=config_file if config_file.is_file() else None)
    try:
        deployment.executors = _executors()
    except Exception as exc:  # an invalid [core] executor: reported, not raised
        deployment.executor_error = f"{type(exc).__name__}: {exc}"
    if read_dags:
        try:
            deployment.dags = _dags(deployment)
        except Exception as exc:  # database down, not migrated, wrong credentials
            deployment.dags_error = _short(exc)
    return deployment


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _executors() -> list[Executor]:
    from airflow.executors.executor_loader import ExecutorLoader

    names = ExecutorLoader.get_executor_names(validate_teams=False)
    seen: set[str | None] = set()
    out = []
    for name in names:
        out.append(Executor(name=name.module_path.rsplit(".", 1)[-1], alias=name.alias,
                            module_path=name.module_path, team=name.team_name,
                            default=name.team_name not in seen))
        seen.add(name.team_name)
    return out


def _dags(deployment: Deployment) -> list[DagInfo]:
    from airflow.configuration import conf
    from airflow.models.dag import DagModel
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    url = conf.get("database", "sql_alchemy_conn", fallback="") or ""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        if not path.is_file():  # connecting would create an empty database there
            raise FileNotFoundError(f"no metadata database at {path}")
    with create_session() as session:
        active = set(session.scalars(select(DagModel.dag_id).where(DagModel.is_stale.is_(False))))
        serialized = SerializedDagModel.read_all_dags(session=session)
        teams: dict[str, str | None] = {}
        if deployment.flag("core", "multi_team") and serialized:
            teams = DagModel.get_dag_id_to_team_name_mapping(list(serialized), session=session)
    out = []
    for dag_id, dag in sorted(serialized.items()):
        if dag_id not in active:
            continue
        team = teams.get(dag_id)
        executors, queues, users = set(), set(), set()
        for task in dag.tasks:
            executors.add(_executor_of(deployment, getattr(task, "executor", None), team))
            queues.add(str(getattr(task, "queue", "") or ""))
            users.add(str(getattr(task, "run_as_user", "") or ""))
        out.append(DagInfo(dag_id=dag_id, team=team, executors=frozenset(executors),
                           queues=frozenset(queues), run_as_users=frozenset(users)))
    return out


def _executor_of(deployment: Deployment, named: str | None, team: str | None) -> str:
    """The class name of the executor a task runs on."""
    candidates = [e for e in deployment.executors if e.team in (team, None)]
    if named:
        for e in candidates:
            if named in (e.alias, e.module_path, e.name):
                return e.name
        return named.rsplit(".", 1)[-1]
    for e in deployment.executors:
        if e.team == team and e.default:
            return e.name
    defaults = [e for e in deployment.executors if e.team is None and e.default]
    return defaults[0].name if defaults else "unknown"
