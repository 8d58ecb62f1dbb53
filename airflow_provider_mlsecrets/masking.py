"""Registering a value with Airflow's log maskers: the one place every surface (backend,
hook, injection) hands a served value to, whatever the value's key."""

from __future__ import annotations


def mask(value: str) -> None:
    """The Task SDK's masker (in a task it tells the supervisor too) and, where it is
    loaded, the core one that in-process runs such as ``airflow dags test`` log through."""
    from airflow.sdk.log import mask_secret

    mask_secret(value)
    try:
        from airflow._shared.secrets_masker import mask_secret as core_mask_secret
    except ImportError:  # a worker with only the Task SDK
        return
    core_mask_secret(value)
