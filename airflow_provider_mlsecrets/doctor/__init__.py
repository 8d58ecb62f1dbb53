"""``mlsecrets doctor``: what in this deployment lets one DAG reach another's secrets.

Run on the API server's host, it reads Airflow's configuration, this environment and (when
reachable) the metadata database's DAGs, and reports each finding with its fix: which DAGs
share a worker pool and so trust each other, where the JWT signing key is, broker and auth
manager credentials, vault credentials within tasks' reach, file modes, plain HTTP, consoles
that repeat task output unmasked, and whether the plugin is loaded. The API server's plugin
logs the same findings once at start-up (:func:`log_findings_once`). One small module per
kind of check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from airflow_provider_mlsecrets.doctor import (
    auth,
    broker,
    consoles,
    files,
    jwt,
    plugin,
    pools,
    transport,
)
from airflow_provider_mlsecrets.doctor import worker_env as _worker_env
from airflow_provider_mlsecrets.doctor._deployment import Deployment, inspect
from airflow_provider_mlsecrets.doctor._finding import ORDER, Finding, Severity

__all__ = ["EXIT_HAZARD", "Finding", "Severity", "findings", "log_findings_once"]

EXIT_HAZARD = 6  # docs/cli.md: the doctor found at least one hazard
CHECKS: tuple[tuple[str, Callable[[Deployment], list[Finding]]], ...] = (
    ("pools", pools.check), ("jwt", jwt.check), ("broker", broker.check),
    ("auth", auth.check), ("env", _worker_env.check), ("files", files.check),
    ("transport", transport.check), ("consoles", consoles.check))


def findings(environ: Mapping[str, str] | None = None, *, in_api_server: bool = False,
             read_dags: bool = True) -> list[Finding]:
    """Every finding, hazards first. Never raises for the deployment's sake: a check that
    cannot run is itself a warning that says why."""
    deployment = inspect(environ, read_dags=read_dags)
    out: list[Finding] = []
    checks = [*CHECKS, ("plugin", lambda d: plugin.check(d, in_api_server=in_api_server))]
    for name, run in checks:
        try:
            out.extend(run(deployment))
        except Exception as exc:  # one broken check must not hide the others' findings
            out.append(Finding(f"{name}.failed", "warning",
                               f"the {name} check could not run ({type(exc).__name__}: "
                               f"{str(exc)[:200]})", "run 'mlsecrets doctor' with "
                               "MLSECRETS_DEBUG=1 and report it"))
    return sorted(out, key=lambda f: ORDER[f.severity])


_logged = False
_lock = threading.Lock()


def log_findings_once(logger: logging.Logger) -> list[Finding]:
    """Log the hazards and warnings, one line each, the first time it is called in this
    process (the API server's plugin calls it at start-up); later calls do nothing."""
    global _logged
    with _lock:
        if _logged:
            return []
        _logged = True
    found = findings(in_api_server=True)
    for f in found:
        if f.severity == "hazard":
            logger.error("mlsecrets doctor: hazard: %s (%s). Fix: %s", f.finding, f.check, f.fix)
        elif f.severity == "warning":
            logger.warning("mlsecrets doctor: warning: %s (%s). Fix: %s", f.finding, f.check,
                           f.fix)
    hazards = sum(f.severity == "hazard" for f in found)
    warnings = sum(f.severity == "warning" for f in found)
    logger.info("mlsecrets doctor: %d hazard(s), %d warning(s); 'airflow mlsecrets doctor' "
                "shows the full report", hazards, warnings)
    return found
