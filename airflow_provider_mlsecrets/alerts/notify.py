"""Sending through Airflow's notifiers: the same classes users attach to DAG callbacks
(SMTP, Slack, HTTP webhooks), named by class path in the alert file, their connections
(``smtp_default``, ``http_default``…) from Airflow's.

Only subclasses of Airflow's ``BaseNotifier`` are accepted (no arbitrary callable from a
file). Each is built with our message in the keyword arguments the file (or
:data:`..config.KNOWN_NOTIFIERS`) names and called through ``notify(context)``, never
through ``__call__``, which would render its template fields with Jinja; its
``template_fields`` are emptied too, so nothing the notifier does later renders a record's
content either. Imports Airflow only when called."""

from __future__ import annotations

import importlib
from typing import Any

from airflow_provider_mlsecrets.alerts.config import NotifierSpec
from airflow_provider_mlsecrets.alerts.message import Message
from airflow_provider_mlsecrets.errors import ConfigurationError


def notifier_class(spec: NotifierSpec) -> type[Any]:
    """The notifier's class, checked to be an Airflow notifier."""
    from airflow.sdk import BaseNotifier

    module_name, _, class_name = spec.class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"alert notifier {spec.name}: cannot import {spec.class_path} "
            f"({type(exc).__name__}); install the Airflow provider that ships it") from None
    if not (isinstance(found, type) and issubclass(found, BaseNotifier)):
        raise ConfigurationError(f"alert notifier {spec.name}: {spec.class_path} is not an "
                                 "Airflow notifier (a subclass of BaseNotifier)")
    return found


def build(spec: NotifierSpec, message: Message) -> Any:
    cls = notifier_class(spec)
    kwargs = {**spec.kwargs, **{kw: message.part(part) for kw, part in spec.message.items()}}
    try:
        notifier = cls(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"alert notifier {spec.name}: {spec.class_path} does not "
                                 f"take these arguments ({exc})") from None
    notifier.template_fields = ()  # nothing of ours is ever a template
    return notifier


def send(spec: NotifierSpec, message: Message) -> None:
    """Send one message; whatever the notifier raises is the caller's to record."""
    build(spec, message).notify({"mlsecrets_alert": message.json()})


def failure(exc: BaseException) -> str:
    """What is kept of a failed send: the exception's type and a status code, never its
    text (a connection's URL or a server's answer could carry a credential)."""
    out = type(exc).__name__
    code = getattr(exc, "smtp_code", None)
    if isinstance(code, int):
        out += f" (SMTP {code})"
    for cause in (exc, exc.__cause__ or exc.__context__):  # an HTTP hook wraps it
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(status, int):
            out += f" (HTTP {status})"
            break
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int):
        out += f" (errno {errno})"
    if isinstance(exc, ConfigurationError):
        out += f": {exc}"
    return out[:500]
