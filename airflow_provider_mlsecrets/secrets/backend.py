"""``MLSecretsBackend``: Airflow's connections, variables and config from the vault.

Configure it as ``[secrets] backend`` (API server, scheduler, DAG processor) and/or
``[workers] secrets_backend`` (inside each task), with ``backend_kwargs`` such as
``{"token_file": "/run/secrets/mlsecrets-pipeline.token", "connections_lookup_pattern": "^ml_"}``
(see docs/airflow.md). Every lookup is an ``inject`` by the configured pipeline principal,
audited with the task's identity.

The search chain contract: ``None`` means "not here, ask the next backend"; any refusal
(a policy deny, an integrity failure, an unreachable HSM or database) raises
:class:`AirflowSecretsBackendAccessDenied`, which stops the chain so a lower backend can
never serve a secret of the same name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
from airflow.secrets.base_secrets import BaseSecretsBackend

from airflow_provider_mlsecrets import metrics
from airflow_provider_mlsecrets.errors import AccessDenied, InvalidInput, MLSecretsError, NotFound
from airflow_provider_mlsecrets.injection.resolve import SECRET_KEY_PREFIX
from airflow_provider_mlsecrets.masking import mask
from airflow_provider_mlsecrets.paths import parse_path

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow_provider_mlsecrets.audit.record import ContextValue
    from airflow_provider_mlsecrets.service import Caller, Vault

log = logging.getLogger(__name__)
_TASK_IDENTITY = "airflow_provider_mlsecrets.api.task_identity"
UNVERIFIED_TASK = "<unverified task>"  # the audit principal of a refused task token
TEAM_SCOPE = "<team scope>"  # the audit principal of a team-scope refusal of this process
# who a process that holds the vault but no token speaks as (the API server's own lookups,
# such as an alert notifier's connection): no principal can bear this name
PROCESS = "<airflow process>"
TEAM_NAME = re.compile(r"[a-zA-Z0-9_-]{3,50}")  # Airflow's own rule for team names
_SETTINGS = ("home", "db_url", "pkcs11_module", "pkcs11_token", "pkcs11_pin_file",
             "softhsm2_conf", "key_prefix", "token_file")

class MLSecretsBackend(BaseSecretsBackend):
    """Connections, variables and config from the mlsecrets vault.

    :param connections_prefix: vault folder of connections (``None`` turns them off; an
        empty one is the top level, an id then its whole path, as hashicorp and amazon read it)
    :param variables_prefix: vault folder of variables (likewise)
    :param config_prefix: vault folder of config values (likewise)
    :param connections_lookup_pattern: only ids matching this regex (``re.match``, in any
        letter case) are looked up
    :param variables_lookup_pattern: only keys matching this regex are looked up
    :param config_lookup_pattern: only keys matching this regex are looked up
    :param team_prefix: where a team's own secrets live, ``{team}`` standing for its name
        (default ``teams/{team}``: ``teams/<team>/connections/<id>``); a lookup with a
        ``team_name`` tries that first, then the global path; a lookup with none never
        reaches anything under the team root. ``None`` or empty turns team namespaces off.
    :param token_file: the pipeline principal's token (else ``MLSECRETS_TOKEN_FILE`` or
        ``MLSECRETS_TOKEN``); any other vault setting by its name (``home``, ``db_url``,
        ``pkcs11_module``, ``pkcs11_token``, ``pkcs11_pin_file``, ``softhsm2_conf``,
        ``key_prefix``), else the ``MLSECRETS_*`` environment.
    """

    def __init__(self, connections_prefix: str | None = "connections",
                 variables_prefix: str | None = "variables", config_prefix: str | None = "config",
                 connections_lookup_pattern: str | None = None,
                 variables_lookup_pattern: str | None = None,
                 config_lookup_pattern: str | None = None,
                 team_prefix: str | None = "teams/{team}", **settings: str) -> None:
        super().__init__()
        unknown = set(settings) - set(_SETTINGS)
        if unknown:
            raise ValueError(f"MLSecretsBackend got unknown backend_kwargs {sorted(unknown)}; "
                             f"it takes the prefixes, the lookup patterns and {_SETTINGS}")
        self.kinds = {
            "connection": _Kind(connections_prefix, connections_lookup_pattern),
            "variable": _Kind(variables_prefix, variables_lookup_pattern),
            "config": _Kind(config_prefix, config_lookup_pattern),
        }
        self.teams = _Teams.parse(team_prefix or None, self.kinds)
        self._settings = dict(settings)
        self._vault: Vault | None = None
        self._pid: int | None = None
        self._credential: tuple[int, bool] | None = None  # (pid, configured?)

    # -- BaseSecretsBackend ----------------------------------------------------------
    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        """As the base class, but the connection is built once and that one is masked
        (building an Airflow ``Connection`` is most of a lookup's cost outside the vault)."""
        if self.relaying():
            from airflow_provider_mlsecrets.secrets.relay import relay_connection

            # the Execution API derives the team from the task's token: nothing to pass
            return relay_connection(conn_id) if self._ours("connection", conn_id) else None
        value = self._lookup("connection", conn_id, team_name)
        if not value:
            return None
        conn = self.deserialize_connection(conn_id=conn_id, value=value)
        mask_connection(conn)
        return conn

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        if self.relaying():
            conn = self.get_connection(conn_id)
            return None if conn is None else str(conn.as_json())
        value = self._lookup("connection", conn_id, team_name)
        if value is not None:
            self._mask_connection(conn_id, value)
        return value

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        if self.relaying():
            from airflow_provider_mlsecrets.secrets.relay import relay_variable

            return relay_variable(key) if self._ours("variable", key) else None
        return self._lookup("variable", key, team_name)

    def get_config(self, key: str) -> str | None:
        if self.relaying():
            return None  # configuration is not served through the Execution API
        return self._lookup("config", key)

    def relaying(self) -> bool:
        """Whether this backend relays to the Execution API instead of opening the vault:
        in a supervised task process that holds no vault credential (no token or token
        file), where it could only be refused (see :mod:`.relay`)."""
        from airflow_provider_mlsecrets.secrets.relay import in_task_process

        if not in_task_process():
            return False
        if self._credential is None or self._credential[0] != os.getpid():
            self._credential = (os.getpid(), self._credential_configured())
        return not self._credential[1]

    def _credential_configured(self) -> bool:
        from airflow_provider_mlsecrets.settings import Settings

        try:
            settings = Settings.load(overrides=self._settings)
        except MLSecretsError:
            return True  # misconfigured, not absent: the lookup will say what to fix
        # a service URL alone is no credential: with it this process could only be refused
        return bool(settings.token or settings.token_file)

    def _ours(self, kind: str, identifier: str) -> bool:
        """Whether the API server's backend (same prefixes and patterns) serves this key."""
        if kind == "variable" and identifier.startswith(SECRET_KEY_PREFIX):
            try:
                parse_path(identifier.removeprefix(SECRET_KEY_PREFIX))
            except InvalidInput:
                return False
            return True
        return self.path_for(kind, identifier) is not None

    async def aget_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        from asgiref.sync import sync_to_async

        value: str | None = await sync_to_async(self.get_conn_value, thread_sensitive=True)(
            conn_id, team_name)
        return value

    async def aget_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        value = await self.aget_conn_value(conn_id, team_name)
        return None if value is None else self.deserialize_connection(conn_id, value)

    async def aget_variable(self, key: str, team_name: str | None = None) -> str | None:
        from asgiref.sync import sync_to_async

        value: str | None = await sync_to_async(self.get_variable, thread_sensitive=True)(
            key, team_name)
        return value

    # -- the lookup ------------------------------------------------------------------
    def path_for(self, kind: str, identifier: str) -> str | None:
        """The vault path of ``identifier``, or ``None`` if this backend does not serve it."""
        if kind == "variable" and identifier.startswith(SECRET_KEY_PREFIX):
            # any vault path, as a variable: how a worker with no vault settings reaches a
            # secret: only for a task's verified Execution API request (elsewhere the
            # prefixes and patterns below decide, and such a key is not ours)
            if not _in_execution_request():
                return None
            try:
                return parse_path(identifier.removeprefix(SECRET_KEY_PREFIX))
            except InvalidInput:
                return None
        spec = self.kinds[kind]
        if spec.prefix is None:
            return None
        if spec.pattern is not None and not spec.pattern.match(identifier):
            return None
        try:
            return parse_path(_join(spec.prefix, identifier))
        except InvalidInput:
            return None  # an id the vault grammar cannot hold is not ours to serve

    def _lookup(self, kind: str, identifier: str, team_name: str | None = None) -> str | None:
        """:meth:`_find`, measured (``mlsecrets.lookup``) when metrics are on."""
        if not metrics.enabled():
            return self._find(kind, identifier, team_name)
        started, outcome = time.perf_counter(), "error"
        try:
            value = self._find(kind, identifier, team_name)
            outcome = "not_found" if value is None else "found"
            return value
        except AirflowSecretsBackendAccessDenied as exc:
            # _refuse raises from inside the handler of what the vault said (kept as context)
            why = exc.__context__
            outcome = ("denied" if isinstance(why, AccessDenied) else
                       "not_found" if isinstance(why, NotFound) else "error")
            raise
        finally:
            metrics.lookup(kind, outcome, time.perf_counter() - started)

    def _find(self, kind: str, identifier: str, team_name: str | None = None) -> str | None:
        path = self.path_for(kind, identifier)
        if path is None:
            return None
        who = "this process"
        try:
            vault = self._get_vault()
            caller, team = self._caller(vault, path, team_name)
            who = _who(caller)
            raw = _first_found(vault, caller,
                               self._scoped(vault, caller, kind, identifier, path, team))
        except NotFound:
            if kind == "variable" and identifier.startswith(SECRET_KEY_PREFIX):
                # the namespace is ours: no other source may answer for a missing secret
                _refuse(f"mlsecrets has no secret at {path}", who=who, kind=kind,
                        identifier=identifier, why=f"no secret at {path}", status_code=404,
                        reason="not_found")
            return None
        except _IdentityRefused as exc:
            _refuse(f"mlsecrets refused the {kind} {identifier!r}: {exc}", who=exc.who,
                    kind=kind, identifier=identifier, why=str(exc))
        except MLSecretsError as exc:
            if not _in_execution_request():
                log.error("mlsecrets refused the %s %r (%s): %s", kind, identifier,
                          type(exc).__name__, exc)
            denied = isinstance(exc, AccessDenied)
            _refuse(f"mlsecrets refused the {kind} {identifier!r}: {exc}", who=who, kind=kind,
                    identifier=identifier, why=str(exc), status_code=403 if denied else 503,
                    reason="access_denied" if denied else "vault_error")
        except Exception as exc:
            # Anything unforeseen must stop the chain too: falling through would let a lower
            # backend serve this name. Only the type is shown: its text is not ours.
            if not _in_execution_request():
                log.error("mlsecrets failed on the %s %r (%s)", kind, identifier,
                          type(exc).__name__)
            _refuse(f"mlsecrets failed on the {kind} {identifier!r} ({type(exc).__name__})",
                    who=who, kind=kind, identifier=identifier, why=type(exc).__name__,
                    status_code=503,
                    reason="vault_error")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AirflowSecretsBackendAccessDenied(
                f"the {kind} {identifier!r} in mlsecrets is not UTF-8 text") from None
        mask_value(value)
        return value

    def _caller(self, vault: Vault, path: str, team_name: str | None,
                ) -> tuple[Caller, str | None]:
        """Who looks this up, and for which team. Inside the Airflow API server, serving a
        task's lookup that fell through the Execution API, it is that task's DAG
        (``dag:DAG_ID``) and then its team (``team:TEAM``), both verified from the task's
        own token while that try is running, and never this server's token; Airflow's
        ``team_name`` must name that same team. Anywhere else, this process's configured
        token and the task it runs, if any, for the ``team_name`` Airflow gives."""
        from airflow_provider_mlsecrets.airflow_context import caller_context
        from airflow_provider_mlsecrets.service import Caller

        if _in_execution_request():
            from airflow_provider_mlsecrets.api.task_identity import TaskRefused, task_identity

            context = {**caller_context(), "component": "airflow api-server"}
            try:
                task = task_identity()  # refuses rather than fall back to this server's token
            except TaskRefused as exc:
                raise _audit_refusal(vault, path, context, exc) from None
            team = task["team"]
            context.update({"verified_by": "execution-api",
                            **{k: v for k, v in task.items() if k != "team"}})
            if team is not None:
                context["team"] = team
            names = (f"dag:{task['dag_id']}",) + ((f"team:{team}",) if team else ())
            caller = Caller(None, context, verified=names)
            if team_name != team:
                raise _scope_refusal(vault, caller, path, team_name, (
                    f"Airflow asked for team {team_name!r} but the task's token belongs to "
                    f"{'team ' + repr(team) if team else 'no team'}"))
        else:
            token = vault.settings.read_caller_token()
            if token is None and hasattr(vault, "core"):
                # a process that holds the vault and no token (the API server's own lookups:
                # a notifier's connection, the UI's): it may be given nothing, so where the
                # vault holds nothing the search goes on (not found), and where it holds a
                # secret it is refused, so no lower backend serves that name instead
                caller = Caller(None, caller_context(), verified=(PROCESS,))
            else:
                caller = Caller(token, caller_context())
        if team_name is not None and not TEAM_NAME.fullmatch(team_name):
            raise _scope_refusal(vault, caller, path, team_name,
                                 "a team name is 3 to 50 characters from [a-zA-Z0-9_-]")
        return caller, team_name

    def _scoped(self, vault: Vault, caller: Caller, kind: str, identifier: str, path: str,
                team: str | None) -> list[str]:
        """The paths to try, most specific first: the team's own, then the global one. Any
        path under the team root that is not the caller's own team's is refused, audited."""
        teams = self.teams
        if teams is None:
            return [path]
        candidates = [path]
        if team is not None and not identifier.startswith(SECRET_KEY_PREFIX):
            prefix = self.kinds[kind].prefix or ""  # set: path_for served the id
            candidates.insert(0, parse_path(_join(teams.namespace(team), prefix, identifier)))
        for candidate in candidates:
            why = teams.outside(candidate, team)
            if why is not None:
                raise _scope_refusal(vault, caller, candidate, team, why)
        return candidates

    def _get_vault(self) -> Vault:
        if self._vault is None or self._pid != os.getpid():
            from airflow_provider_mlsecrets.client import open_existing_vault
            from airflow_provider_mlsecrets.settings import Settings

            self._vault = open_existing_vault(Settings.load(overrides=self._settings))
            self._pid = os.getpid()
        return self._vault

    def _mask_connection(self, conn_id: str, value: str) -> None:
        """Mask the password and the URI form too, not only the stored text."""
        try:
            conn = self.deserialize_connection(conn_id, value)
        except Exception:  # malformed: the raw text is masked already; Airflow will complain
            return
        mask_connection(conn)


def mask_connection(conn: Any) -> None:
    """The password as Airflow decodes it, the connection's URI form (which may escape the
    password differently from the stored text) and the extra as a whole (its fields are
    masked by Airflow's masker when their names look sensitive; every string field would
    hide settings such as ``sslmode`` throughout the log)."""
    for part in (conn.password, conn.get_uri(), conn.extra):
        if part:
            mask(part)


class _Kind:
    def __init__(self, prefix: str | None, pattern: str | None) -> None:
        self.prefix = prefix.strip("/") if prefix is not None else None
        try:
            # in any letter case, as the amazon backends match (``re.IGNORECASE``)
            self.pattern = (re.compile(pattern, re.IGNORECASE) if pattern is not None
                            else None)
        except re.error as exc:
            raise ValueError(f"invalid lookup pattern {pattern!r}: {exc}") from None


class _Teams:
    """Team namespaces: ``template`` (``teams/{team}``) names a team's own folder, all of
    them under ``root`` (``teams``), which no kind prefix may overlap."""

    def __init__(self, template: str, root: str) -> None:
        self.template = template
        self.root = root

    @classmethod
    def parse(cls, template: str | None, kinds: dict[str, _Kind]) -> _Teams | None:
        if template is None:
            return None
        template = template.strip("/")
        parts = template.split("/")
        if parts.count("{team}") != 1 or parts.index("{team}") == 0:
            raise ValueError(f"team_prefix {template!r} must hold '{{team}}' once, as a whole "
                             "segment after at least one fixed one (for example "
                             "'teams/{team}'); set it to None to turn team namespaces off")
        try:
            parse_path(template.replace("{team}", "team"))
        except InvalidInput as exc:
            raise ValueError(f"team_prefix {template!r}: {exc}") from None
        teams = cls(template, "/".join(parts[:parts.index("{team}")]))
        for name, kind in kinds.items():
            if kind.prefix is not None and (teams.under_root(kind.prefix)
                                            or _under(teams.root.lower(), kind.prefix.lower())):
                raise ValueError(
                    f"the {name} prefix {kind.prefix!r} overlaps the team root "
                    f"{teams.root!r}: a lookup with no team could reach a team's secrets; "
                    "choose prefixes outside it or another team_prefix")
        return teams

    def namespace(self, team: str) -> str:
        return self.template.replace("{team}", team)

    def under_root(self, path: str) -> bool:
        """Whether ``path`` is the team root or under it, in any letter case (the vault
        refuses a name that differs from one it holds only in case, never serves it)."""
        return _under(path.lower(), self.root.lower())

    def outside(self, path: str, team: str | None) -> str | None:
        """Why ``path`` is out of reach of a lookup for ``team`` (``None``: global), or
        ``None`` if it is in reach: outside the team root, or inside the team's own
        namespace (exactly: another team's name may differ only in case)."""
        if not self.under_root(path):
            return None
        if team is None:
            return (f"{path} is under the team root {self.root}/, which a lookup with no "
                    "team never reaches")
        own = self.namespace(team)
        if path.startswith(own + "/"):
            return None
        return f"{path} is outside team {team}'s namespace {own}/"


def _join(*parts: str) -> str:
    """The folders and the id joined by ``/``, an empty (top-level) folder adding nothing;
    the id is kept whole, so an empty one stays invalid."""
    *folders, identifier = parts
    return "/".join([*(folder for folder in folders if folder), identifier])


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def _first_found(vault: Vault, caller: Caller, paths: list[str]) -> bytes:
    """The first of ``paths`` the vault holds; a refusal of any stops the search."""
    for path in paths[:-1]:
        try:
            return vault.secrets.inject(caller, path)
        except NotFound:
            continue
    return vault.secrets.inject(caller, paths[-1])


def _in_execution_request() -> bool:
    """Whether this process is the Airflow API server serving a task's Execution API
    request (the plugin's middleware says so; nowhere else is it loaded and set)."""
    if _TASK_IDENTITY not in sys.modules:
        return False
    from airflow_provider_mlsecrets.api.task_identity import in_execution_request

    return in_execution_request()


class _IdentityRefused(AccessDenied):
    """A task token that may not speak for its DAG; its denied record is written already."""

    def __init__(self, message: str, who: str) -> None:
        super().__init__(message)
        self.who = who


def _audit_refusal(vault: Vault, path: str, context: dict[str, ContextValue],
                   exc: Any) -> _IdentityRefused:
    """Write the ``denied`` record of a refused task identity (no vault operation ran, so
    none was written) and say who claimed what."""
    from airflow_provider_mlsecrets.audit.record import Outcome

    claimed: dict[str, Any] = exc.claimed
    who = (f"a token for {claimed['dag_id']}.{claimed['task_id']} (run {claimed['run_id']}, "
           f"try {claimed['try_number']})" if "dag_id" in claimed
           else f"a token for task instance {claimed.get('ti_id', '?')}")
    context.update({"verified_by": "refused", "requested_path": path,
                    **{f"claimed_{k}": v for k, v in claimed.items()}})
    core = getattr(vault, "core", None)  # a remote vault audits on its own side
    if core is not None:
        core.record("secret.inject", UNVERIFIED_TASK, Outcome.DENIED, exc.reason, context)
    return _IdentityRefused(str(exc), who)


def _scope_refusal(vault: Vault, caller: Caller, path: str, team: str | None,
                   why: str) -> _IdentityRefused:
    """Write the ``denied`` record of a lookup refused for its team scope (no vault
    operation ran) and say who asked for what."""
    from airflow_provider_mlsecrets.audit.record import Outcome

    context: dict[str, ContextValue] = {**caller.context, "requested_path": path,
                                        "requested_team": team or ""}
    principal = caller.verified[0] if caller.verified else TEAM_SCOPE
    core = getattr(vault, "core", None)  # a remote vault audits on its own side
    if core is not None:
        core.record("secret.inject", principal, Outcome.DENIED, why, context, path=path)
    return _IdentityRefused(f"access denied: {why}", _who(caller))


def _who(caller: Caller) -> str:
    """The caller as one log line names it: the verified task, else this process."""
    if not caller.verified:
        return "this process's token"
    context = caller.context
    return (f"{caller.verified[0]} (task {context.get('task_id')}, run {context.get('run_id')},"
            f" try {context.get('try_number')})")


def _refuse(message: str, *, who: str, kind: str, identifier: str, why: str,
            status_code: int = 403, reason: str = "access_denied") -> NoReturn:
    """Stop the search chain. Serving a task through the Execution API, the refusal is
    final and quiet: one log line (who, what, why) and an HTTP answer (403 for a denial,
    404 for a missing ``mlsecrets:`` key, 503 for a vault failure), never a traceback or a
    500 that the Task SDK would retry."""
    if _in_execution_request():
        from airflow_provider_mlsecrets.api.task_identity import ExecutionAPIDenied

        log.warning("mlsecrets: %s %s the %s %r: %s", who,
                    "was refused" if status_code != 404 else "asked for a missing",
                    kind, identifier, why)
        raise ExecutionAPIDenied(message, status_code=status_code, reason=reason) from None
    raise AirflowSecretsBackendAccessDenied(message) from None


def mask_value(value: str) -> None:
    """Mask a served value and, if it is a JSON document, each of its string leaves (a task
    that deserialises it and logs one field must not show that field)."""
    mask(value)
    if value[:1] not in ("{", "["):
        return
    try:
        parsed = json.loads(value)
    except ValueError:
        return
    for leaf in _leaves(parsed):
        mask(leaf)


def _leaves(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for item in node.values():
            yield from _leaves(item)
    elif isinstance(node, list):
        for item in node:
            yield from _leaves(item)
