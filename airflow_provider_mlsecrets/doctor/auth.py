"""Airflow's simple auth manager: its generated passwords, and the all-admins switch."""

from __future__ import annotations

from pathlib import Path

from airflow_provider_mlsecrets.doctor._deployment import Deployment
from airflow_provider_mlsecrets.doctor._finding import Finding, describe_mode, mode_of

SIMPLE = "SimpleAuthManager"
PRODUCTION = ("the simple auth manager is meant for development; in production use the FAB or "
              "Keycloak auth manager")


def check(d: Deployment) -> list[Finding]:
    if SIMPLE not in (d.conf("core", "auth_manager") or SIMPLE):
        return []
    out: list[Finding] = []
    if d.flag("core", "simple_auth_manager_all_admins"):
        out.append(Finding("auth.all-admins", "hazard",
                           "[core] simple_auth_manager_all_admins is on: every request, a "
                           "task's included, is an Airflow admin without logging in",
                           "turn it off; " + PRODUCTION))
    path = Path(d.conf("core", "simple_auth_manager_passwords_file")
                or Path(_airflow_home()) / "simple_auth_manager_passwords.json.generated")
    mode = mode_of(path)
    if mode is not None and mode & 0o077:
        out.append(Finding("auth.password-file", "hazard",
                           f"the simple auth manager's password file {describe_mode(path, mode)}"
                           " is readable by other users: a task can log in as any user in it",
                           f"chmod 600 {path}; {PRODUCTION}"))
    elif mode is not None:
        out.append(Finding("auth.password-file", "ok",
                           f"the simple auth manager's password file {describe_mode(path, mode)}",
                           "under LocalExecutor tasks run as its owner and can still read it; "
                           + PRODUCTION))
    return out


def _airflow_home() -> str:
    from airflow.configuration import AIRFLOW_HOME

    return str(AIRFLOW_HOME)
