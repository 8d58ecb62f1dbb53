"""The plugin is what makes the API server answer a task as its own DAG: without it, task
lookups that reach the API server carry no verified identity."""

from __future__ import annotations

from airflow_provider_mlsecrets.doctor._deployment import Deployment
from airflow_provider_mlsecrets.doctor._finding import Finding

PLUGIN = "airflow_provider_mlsecrets.api.airflow_plugin"
PACKAGE = "airflow_provider_mlsecrets."
BACKEND = "airflow_provider_mlsecrets.secrets.backend.MLSecretsBackend"


def check(d: Deployment, *, in_api_server: bool = False) -> list[Finding]:
    out: list[Finding] = []
    if in_api_server:
        out.append(Finding("plugin.loaded", "ok", "the mlsecrets plugin is loaded (it runs "
                           "this check)"))
    else:
        from airflow import plugins_manager

        _apps, middlewares = plugins_manager.get_fastapi_plugins()
        # the task-identity middleware is the part that matters: it is what the plugin adds
        loaded = any(str(getattr(m.get("middleware"), "__module__", "")).startswith(PACKAGE)
                     for m in middlewares)
        if loaded:
            out.append(Finding("plugin.loaded", "ok", "the mlsecrets plugin is among "
                               "Airflow's plugins"))
        else:
            errors = {k: v for k, v in plugins_manager.get_import_errors().items()
                      if "mlsecrets" in k or "mlsecrets" in v}
            why = f" (import error: {next(iter(errors.values()))[:200]})" if errors else ""
            out.append(Finding("plugin.not-loaded", "hazard",
                               f"{PLUGIN} is not among Airflow's plugins{why}: the API "
                               "server cannot tell which DAG a task lookup comes from",
                               "install airflow-provider-mlsecrets in the API server's "
                               "environment (it registers the plugin through the "
                               "'airflow.plugins' entry point) and restart it"))
    backend = d.conf("secrets", "backend")
    if backend != BACKEND:
        out.append(Finding("plugin.backend", "warning",
                           f"[secrets] backend is {backend or 'unset'}, so the API server does "
                           "not serve the vault's secrets to tasks",
                           f"set [secrets] backend = {BACKEND} on the API server"))
    return out
