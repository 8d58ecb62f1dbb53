"""Vault credentials where tasks can reach them: in an environment tasks inherit, or in
the secrets backend configuration of the workers (which every task on them reads)."""

from __future__ import annotations

import json

from airflow_provider_mlsecrets.doctor._deployment import SHARED_USER_EXECUTORS, Deployment
from airflow_provider_mlsecrets.doctor._finding import Finding

OURS = "airflow_provider_mlsecrets"
INLINE = ("MLSECRETS_TOKEN", "MLSECRETS_PKCS11_PIN")
CREDENTIAL_KWARGS = ("token", "token_file", "pkcs11_pin", "pkcs11_pin_file")
WORKER_FIX = ("give workers no vault settings at all: tasks then reach the vault through "
              "the API server as their own DAG (docs/service.md); unset [workers] "
              "secrets_backend_kwargs' credentials")


def check(d: Deployment) -> list[Finding]:
    out: list[Finding] = []
    shared = bool(d.executor_kinds() & SHARED_USER_EXECUTORS)
    inline = [name for name in INLINE if d.environ.get(name)]
    if inline:
        out.append(Finding(
            "env.inline-credential", "hazard" if shared else "warning",
            f"{', '.join(inline)} is in this environment" + (
                ": under LocalExecutor every task inherits it and acts as that principal "
                "(or opens the HSM)" if shared else
                ": every process started from it inherits it"),
            "use MLSECRETS_TOKEN_FILE / MLSECRETS_PKCS11_PIN_FILE (mode 0600, readable only "
            "by the API server's user) and keep MLSECRETS_* out of the scheduler's and "
            "workers' environment"))
    elif shared and any(k.startswith("MLSECRETS_") for k in d.environ):
        out.append(Finding("env.mlsecrets-settings", "warning",
                           "MLSECRETS_* settings are in this environment; if the scheduler "
                           "shares it, every task under LocalExecutor has them",
                           "set MLSECRETS_* for the API server alone"))
    out.extend(_worker_backend(d))
    return out


def _worker_backend(d: Deployment) -> list[Finding]:
    backend = d.conf("workers", "secrets_backend")
    section, key = "workers", "secrets_backend_kwargs"
    if not backend:  # workers fall back to [secrets] backend and its kwargs
        backend = d.conf("secrets", "backend")
        section, key = "secrets", "backend_kwargs"
    if not backend or not backend.startswith(OURS):
        return []
    try:
        kwargs = json.loads(d.conf(section, key) or "{}")
    except ValueError:
        return [Finding("env.worker-backend-kwargs", "warning",
                        f"[{section}] {key} is not JSON", "fix it")]
    named = sorted(k for k in CREDENTIAL_KWARGS if isinstance(kwargs, dict) and kwargs.get(k))
    if not named:
        return []
    via = "" if section == "workers" else (
        " ([workers] secrets_backend is unset, so workers use [secrets] backend and its "
        "kwargs)")
    return [Finding("env.worker-credentials", "hazard",
                    f"[{section}] {key} gives the workers' secrets backend {', '.join(named)}"
                    f"{via}: every task on those workers can use it, whatever its DAG",
                    WORKER_FIX)]
