"""Airflow objects in the vault: ``secret put … --connection-uri/--connection-json`` validation
and ``mlsecrets import-airflow``, which copies the metastore's connections and variables
into the vault and, only after each copy was read back and compared, deletes the source."""

from __future__ import annotations

import argparse
import hmac
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets.errors import (
    ConfigurationError,
    InvalidInput,
    MLSecretsError,
    NotFound,
)
from airflow_provider_mlsecrets.paths import parse_path

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context


def connection_value(path: str, source: str, *, as_json: bool, limit: int) -> bytes:
    """A connection read from ``source`` (a file, or ``-`` for stdin) and validated the way
    Airflow will read it. A URI holds credentials, so it is never taken from argv."""
    if "://" in source or source.lstrip().startswith("{"):
        raise InvalidInput("a connection holds credentials, so it is never taken from the "
                           "command line: give a file, or '-' and pipe it on standard input")
    try:
        if source == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(source, "rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None
    if len(data) > limit:
        raise InvalidInput(f"the connection is over the limit of {limit} bytes "
                           "(MLSECRETS_MAX_VALUE_BYTES)")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidInput("a connection must be UTF-8 text") from None
    conn_id = parse_path(path).rsplit("/", 1)[-1]
    from airflow.models.connection import Connection

    try:
        if as_json:
            json.loads(text)
            conn = Connection.from_json(text, conn_id=conn_id)
        else:
            if "://" not in text or any(c.isspace() for c in text):
                raise ValueError("not scheme://…")
            conn = Connection(conn_id=conn_id, uri=text)
        if not conn.conn_type:
            raise ValueError("no connection type")
    except Exception as exc:  # Airflow raises several kinds; the message names no value
        kind = "JSON" if as_json else "URI"
        raise InvalidInput(f"not a valid Airflow connection {kind} ({type(exc).__name__}); "
                           "nothing was stored") from None
    return text.encode("utf-8")


@dataclass
class Item:
    kind: str
    id: str
    path: str
    result: str


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    imp = commands.add_parser(
        "import-airflow", parents=[common],
        help="copy the connections and variables of Airflow's metastore into the vault")
    imp.add_argument("--dry-run", action="store_true", help="report what would be copied")
    imp.add_argument("--delete-source", action="store_true",
                     help="delete each metastore item once its copy was read back and matched")
    imp.add_argument("--connections-prefix", default="connections")
    imp.add_argument("--variables-prefix", default="variables")
    imp.set_defaults(handler=_import)


def _metastore_items(args: argparse.Namespace) -> list[tuple[str, str, str, Any]]:
    """(kind, id, serialised value, the ORM row) for every metastore connection and variable."""
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy.exc import OperationalError, ProgrammingError

    items: list[tuple[str, str, str, Any]] = []
    try:
        with create_session() as session:
            for conn in session.query(Connection).order_by(Connection.conn_id):
                items.append(("connection", conn.conn_id, conn.as_json(), conn))
            for var in session.query(Variable).order_by(Variable.key):
                items.append(("variable", var.key, var.val, var))
            session.expunge_all()
    except (OperationalError, ProgrammingError):
        raise ConfigurationError(
            "cannot read Airflow's metadata database (no connection or variable table): "
            "run this where Airflow is configured (AIRFLOW_HOME, [database] sql_alchemy_conn) "
            "and its database is migrated ('airflow db migrate')") from None
    return items


def _import(args: argparse.Namespace, ctx: Context) -> int:
    secrets, caller = ctx.vault.secrets, ctx.caller
    report: list[Item] = []
    to_delete: list[tuple[str, str]] = []
    items = _metastore_items(args)
    with ctx.output.progress("importing from Airflow", len(items)) as advance:
        for kind, ident, value, _row in items:
            prefix = args.connections_prefix if kind == "connection" else args.variables_prefix
            folder = prefix.strip("/")
            path = f"{folder}/{ident}" if folder else ident
            report.append(Item(kind, ident, path, _copy_one(
                secrets, caller, path, (value or "").encode("utf-8"), args, to_delete, kind,
                ident, ctx.settings.max_value_bytes)))
            advance(1)
    if args.delete_source and not args.dry_run and to_delete:
        _delete_from_metastore(to_delete, report)
    ctx.output.table(report, ["kind", "id", "path", "result"], empty="the metastore is empty")
    return 1 if any(i.result.startswith(("failed", "differs")) for i in report) else 0


# import-airflow reads a value only to compare it with the metastore's; it never shows it
_COMPARE = "import-airflow: compared with the Airflow metastore's value, not shown"


def _copy_one(secrets: Any, caller: Any, path: str, value: bytes, args: argparse.Namespace,
              to_delete: list[tuple[str, str]], kind: str, ident: str, limit: int) -> str:
    try:
        parse_path(path)
    except InvalidInput:
        return "skipped: the id does not fit the vault's path grammar"
    if len(value) > limit:
        return f"skipped: over the size limit of {limit} bytes"
    try:
        existing = secrets.read(caller, path, reason=_COMPARE)
    except NotFound:
        existing = None
    except MLSecretsError as exc:
        return f"failed: {type(exc).__name__}"
    if existing is not None and not hmac.compare_digest(existing, value):
        return "differs: the vault already holds another value; left alone"
    if args.dry_run:
        return "would copy" if existing is None else "already in the vault"
    try:
        if existing is None:
            secrets.put(caller, path, value, cas=0, description=f"imported Airflow {kind}")
        copied = secrets.read(caller, path, reason=_COMPARE)
    except MLSecretsError as exc:
        return f"failed: {type(exc).__name__}: {exc}"
    if not hmac.compare_digest(copied, value):
        return "failed: the copy read back differs"
    to_delete.append((kind, ident))
    return "copied" if existing is None else "already in the vault"


def _delete_from_metastore(to_delete: list[tuple[str, str]], report: list[Item]) -> None:
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    deleted = set()
    with create_session() as session:
        for kind, ident in to_delete:
            model, column = ((Connection, Connection.conn_id) if kind == "connection"
                             else (Variable, Variable.key))
            if session.query(model).filter(column == ident).delete(
                    synchronize_session=False) == 1:
                deleted.add((kind, ident))
    for item in report:
        if (item.kind, item.id) in deleted:
            item.result += "; deleted from the metastore"
