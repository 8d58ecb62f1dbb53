"""The worker side of the production layout: a task process with no vault settings asks the
Execution API for the vault's keys and masks what comes back.

The vault answers in the API server, so the task's own masker never learns the values it
receives: Airflow masks a connection's password and extra, but a variable only when its key
looks sensitive, and no JSON field of either. Sitting first in the worker's search chain,
the relay asks the Execution API itself (as Airflow's last backend would) for the keys the
vault serves, registers every value it gets, and the JSON document's string leaves, with the
task's masker (which tells the supervisor too), and hands it on. A refusal (HTTP 403) stops
the chain as Airflow's own backend does.

Two ways to run it, with no ``MLSECRETS_*`` setting on the worker:

- one ``airflow.cfg`` everywhere: ``[workers] secrets_backend`` unset falls back to
  ``[secrets] backend``, and ``MLSecretsBackend`` relays by itself in a supervised task
  process that has no vault credential (no token or token file; a URL alone is none);
- explicitly: ``[workers] secrets_backend = airflow_provider_mlsecrets.secrets.relay.
  MLSecretsRelay`` with the same prefixes and lookup patterns as the API server's backend.
"""

from __future__ import annotations

import sys
from typing import Any

from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend, mask_connection

_TASK_RUNNER = "airflow.sdk.execution_time.task_runner"


def in_task_process() -> bool:
    """Whether this process runs task (or DAG-parsing, or trigger) code under a Task SDK
    supervisor, which relays requests to the Execution API. Under ``dag.test()`` the
    in-process supervisor clears the channel while it serves a request, so the server side
    of that same process never relays to itself."""
    runner = sys.modules.get(_TASK_RUNNER)
    return runner is not None and getattr(runner, "SUPERVISOR_COMMS", None) is not None


def relay_variable(key: str) -> str | None:
    """The variable from the Execution API, masked; ``None`` if it has none."""
    if not in_task_process():
        return None
    from airflow.sdk.execution_time.secrets.execution_api import ExecutionAPISecretsBackend

    from airflow_provider_mlsecrets.secrets.backend import mask_value

    value = ExecutionAPISecretsBackend().get_variable(key)  # a 403 raises: the chain stops
    if value is not None:
        mask_value(value)
    return value


def relay_connection(conn_id: str) -> Any:
    """The connection from the Execution API, masked (password, URI, extra and its JSON
    leaves); ``None`` if it has none."""
    if not in_task_process():
        return None
    from airflow.sdk.execution_time.secrets.execution_api import ExecutionAPISecretsBackend

    conn = ExecutionAPISecretsBackend().get_connection(conn_id)
    if conn is not None:
        mask_connection(conn)
    return conn


class MLSecretsRelay(MLSecretsBackend):
    """``[workers] secrets_backend`` for workers that hold nothing of the vault: the keys
    the API server's ``MLSecretsBackend`` serves (same prefixes and lookup patterns, and
    ``mlsecrets:PATH`` variables) are asked of the Execution API and masked in the task.

    :param connections_prefix: as the API server's backend
    :param variables_prefix: as the API server's backend
    :param connections_lookup_pattern: as the API server's backend
    :param variables_lookup_pattern: as the API server's backend
    """

    def __init__(self, connections_prefix: str | None = "connections",
                 variables_prefix: str | None = "variables", config_prefix: str | None = None,
                 connections_lookup_pattern: str | None = None,
                 variables_lookup_pattern: str | None = None,
                 config_lookup_pattern: str | None = None, **settings: str) -> None:
        if settings:
            raise ValueError(
                f"MLSecretsRelay holds no vault settings (got {sorted(settings)}): a worker "
                "reaches the vault only through the Execution API; give it the prefixes and "
                "lookup patterns only, or use MLSecretsBackend for an embedded vault")
        super().__init__(connections_prefix, variables_prefix, None,
                         connections_lookup_pattern, variables_lookup_pattern, None)

    def relaying(self) -> bool:
        return True
