"""docker/ checked statically (no Docker engine on these machines): the compose file parses,
names the production layout's services, and keeps every vault setting away from the
workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"
SERVICES = {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-worker"}
VAULT_SIDE = {"airflow-init", "airflow-apiserver"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    return data


def test_the_compose_file_names_the_production_layout() -> None:
    assert set(compose()["services"]) == SERVICES
    for name in SERVICES:
        assert name in (DOCKER / "README.md").read_text(), name


def test_only_the_init_job_and_the_api_server_reach_the_vault() -> None:
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        volumes = " ".join(service.get("volumes") or [])
        vaultish = [k for k in env if k.startswith("MLSECRETS_") or "SECRETS__BACKEND" in k]
        if name in VAULT_SIDE:
            assert {"MLSECRETS_HOME", "MLSECRETS_DB_URL"} <= set(env), name
            assert "vault:/vault" in volumes, name
        else:
            assert vaultish == [] and "vault:" not in volumes, name
    worker = compose()["services"]["airflow-worker"]
    assert "secrets" not in worker and "JWT" not in " ".join(worker.get("environment") or {})


def test_the_image_is_the_official_airflow_one_with_softhsm2_and_the_provider() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "apache/airflow:3" in text and "softhsm2" in text and "/opt/mlsecrets" in text
