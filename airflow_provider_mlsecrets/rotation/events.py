"""Asset events for rotations that no DAG task ran: ``mlsecrets rotate`` on a host where
Airflow is configured, and ``POST /rotate/PATH`` in the API server's plugin.

A rotation through the rotation DAG emits its event from the task (``outlet_events``, so
Airflow records which run produced it). Any other rotation changes the same credential, so
the DAGs that follow it (scheduled on :func:`~.dag.secret_asset` or on the
``mlsecrets-rotated`` alias) must hear of it too: this writes the same event (same asset,
same ``{"path", "version"}`` extra, through the same alias) straight into Airflow's
metadata database, as Airflow's own REST API does for ``POST /assets/events``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from airflow_provider_mlsecrets.rotation.dag import ROTATED, secret_asset

log = logging.getLogger(__name__)


def airflow_configured() -> bool:
    """Whether this process has an Airflow installation to tell (``AIRFLOW_HOME`` or a
    database URL in the environment, or ``~/airflow/airflow.cfg``); importing Airflow
    without one would write a default configuration under ``$HOME``."""
    return bool(os.environ.get("AIRFLOW_HOME")
                or os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
                or (Path.home() / "airflow" / "airflow.cfg").is_file())


def announce_rotated(path: str, version: int | None) -> str:
    """Emit the asset event of a finished rotation of ``path``; what happened, for a
    person: the event and how many DAG runs it queued, or why there is none. Never raises
    for Airflow's sake: the rotation has happened and stands either way."""
    asset = secret_asset(path)
    try:
        from airflow.assets.manager import asset_manager
        from airflow.models.asset import AssetModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            model = session.scalar(select(AssetModel).where(AssetModel.uri == asset.uri,
                                                            AssetModel.name == asset.name))
            if model is None:
                return f"no asset event: no DAG is scheduled on {asset.uri}"
            event = asset_manager.register_asset_change(
                asset=model, extra={"path": path, "version": version},
                source_alias_names=[ROTATED], source_is_api=True, session=session)
            if event is None:
                return f"no asset event: Airflow did not take the event for {asset.uri}"
            event_id = event.id
    except Exception as exc:  # Airflow unreachable or misconfigured: say so, keep going
        log.warning("the rotation of %s stands, but its asset event was not emitted (%s)",
                    path, type(exc).__name__)
        return (f"no asset event: Airflow's metadata database could not be reached "
                f"({type(exc).__name__}); trigger the DAGs that follow {asset.uri} by hand")
    return f"asset event {event_id} for {asset.uri}"
