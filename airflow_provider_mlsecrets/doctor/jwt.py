"""The key that signs task tokens. Whoever holds it can mint a token for any task instance
and so speak as any DAG to the vault through the Execution API."""

from __future__ import annotations

from pathlib import Path

from airflow_provider_mlsecrets.doctor._deployment import SHARED_USER_EXECUTORS, Deployment
from airflow_provider_mlsecrets.doctor._finding import Finding, describe_mode, mode_of

SECRET_OPTIONS = ("jwt_secret", "jwt_secret_cmd", "jwt_secret_secret")
ASYMMETRIC_FIX = ("sign with an asymmetric key instead: [api_auth] jwt_private_key_path "
                  "(mode 0600, only on the API server and scheduler hosts) and no jwt_secret, "
                  "so everything else verifies with the public key only")


def check(d: Deployment) -> list[Finding]:
    in_env = sorted(f"AIRFLOW__API_AUTH__{o.upper()}" for o in SECRET_OPTIONS
                    if d.environ.get(f"AIRFLOW__API_AUTH__{o.upper()}"))
    in_file = [o for o in SECRET_OPTIONS if d.in_file("api_auth", o)]
    key_path = d.conf("api_auth", "jwt_private_key_path")
    out: list[Finding] = []
    if in_env:
        out.append(Finding(
            "jwt.secret-in-environment", "hazard",
            f"{', '.join(in_env)} is in this environment: every process started from it "
            "inherits it (under LocalExecutor every task), and with it can sign a token for "
            "any task instance", "remove it from the environment of everything but the API "
            "server and scheduler; " + ASYMMETRIC_FIX))
    if key_path:
        out.extend(_private_key(Path(key_path)))
        if in_env or in_file:
            out.append(Finding("jwt.secret-unused", "warning",
                               "jwt_secret is set as well as jwt_private_key_path; Airflow "
                               "signs with the private key, so the secret is an unused copy",
                               "remove jwt_secret from the configuration and environment"))
        return out
    if in_file and d.config_file is not None:
        mode = mode_of(d.config_file) or 0
        shared = bool(d.executor_kinds() & SHARED_USER_EXECUTORS)
        where = describe_mode(d.config_file, mode)
        if mode & 0o077 or shared:
            why = ("readable by other users" if mode & 0o077 else
                   "and tasks run as the user that reads it (LocalExecutor)")
            out.append(Finding("jwt.secret-in-config-file", "hazard",
                               f"[api_auth] {', '.join(in_file)} is in {where}, {why}: a task "
                               "can sign a token for any task instance", ASYMMETRIC_FIX))
        else:
            out.append(Finding("jwt.symmetric", "warning",
                               f"[api_auth] {', '.join(in_file)} in {where}: a symmetric key, "
                               "so every component that verifies tokens can also sign them, "
                               "and every worker that shares this file can", ASYMMETRIC_FIX))
    elif not in_env and not in_file:
        out.append(Finding("jwt.no-key", "warning",
                           "no JWT key is configured here: each process makes up its own "
                           "secret, so tokens do not verify across components",
                           ASYMMETRIC_FIX))
    elif not out:
        out.append(Finding("jwt.symmetric", "warning", "[api_auth] jwt_secret is a symmetric "
                           "key: every component that verifies tokens can also sign them",
                           ASYMMETRIC_FIX))
    return out


def _private_key(path: Path) -> list[Finding]:
    mode = mode_of(path)
    if mode is None:
        return [Finding("jwt.private-key-missing", "hazard",
                        f"[api_auth] jwt_private_key_path names {path}, which does not exist "
                        "or cannot be read here", "point it at the PEM private key")]
    where = describe_mode(path, mode)
    if mode & 0o077:
        return [Finding("jwt.private-key-mode", "hazard",
                        f"the JWT signing key {where} is readable by other users",
                        f"chmod 600 {path}, owned by the API server's user")]
    return [Finding("jwt.asymmetric", "ok", f"tasks' tokens are signed with the private key "
                    f"{where}; workers need only the public key",
                    "keep the file off worker hosts and out of their images")]
