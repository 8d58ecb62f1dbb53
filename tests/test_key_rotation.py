"""KEK rotation on SQLite and PostgreSQL: every data key re-wrapped, no payload touched,
reads going on meanwhile, an interrupted rotation resumed, and the old key disabled."""

from __future__ import annotations

import multiprocessing
import os
import threading
from typing import Any

import pytest
from sqlalchemy import select, text

from airflow_provider_mlsecrets.crypto.envelope import Envelope
from airflow_provider_mlsecrets.errors import IntegrityError
from airflow_provider_mlsecrets.service import Caller, Vault
from airflow_provider_mlsecrets.service import keys as key_service
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.models import SecretVersion
from tests.conftest import Env

N = 30


def fill(env: Env) -> dict[str, bytes]:
    values = {}
    for i in range(N):
        for v in range(1 + i % 2):
            value = f"value-{i}-{v}".encode()
            env.vault.secrets.put(env.admin, f"rot/s{i}", value)
            values[f"rot/s{i}"] = value
    return values


def payloads(env: Env) -> dict[int, tuple[bytes, bytes, str]]:
    with engine_for(env.settings.db_url).connect() as c:
        return {r.id: (bytes(r.nonce), bytes(r.ciphertext), r.kek_id) for r in c.execute(
            select(SecretVersion.id, SecretVersion.nonce, SecretVersion.ciphertext,
                   SecretVersion.kek_id))}


def test_rotation_rewraps_everything_without_touching_a_payload(env: Env) -> None:
    values = fill(env)
    token = env.vault.secrets.seal(env.admin, "rot/sealed", b"sealed-before-rotation")
    before = payloads(env)
    report = env.vault.keys.rotate(env.admin)
    prefix = env.settings.key_prefix
    assert (report.current, report.created, report.rewrapped) == (
        f"{prefix}-kek-2", True, len(before))
    assert report.disabled == [f"{prefix}-kek-1"]
    after = payloads(env)
    assert {i: p[:2] for i, p in after.items()} == {i: p[:2] for i, p in before.items()}
    assert {p[2] for p in after.values()} == {f"{prefix}-kek-2"}
    for path, value in values.items():
        assert env.vault.secrets.read(env.admin, path, reason="in a test") == value
    keys = {k.label: k for k in env.vault.key_list(env.admin)}
    assert (keys[f"{prefix}-kek-1"].state, keys[f"{prefix}-kek-1"].versions_wrapped) == (
        "disabled", 0)
    new = keys[f"{prefix}-kek-2"]
    assert (new.state, new.versions_wrapped, new.sensitive, new.extractable) == (
        "current", len(before), True, False)
    with pytest.raises(IntegrityError):  # sealed under a key that is now disabled
        env.vault.secrets.unseal(env.admin, "rot/sealed", token)
    actions = [r.action for r in env.vault.audit.tail(env.admin, 200)]
    assert {"key.rotate", "key.rewrap", "key.disable"} <= set(actions)
    assert env.vault.audit.verify(env.admin).ok


def test_an_interrupted_rotation_resumes_and_reads_never_fail(env: Env,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    values = fill(env)
    monkeypatch.setattr(key_service, "BATCH", 7)
    env.vault.keys.start(env.admin)
    calls = {"n": 0}
    real = Envelope.rewrap

    def crash_on_the_tenth(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("simulated crash in the middle of a batch")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Envelope, "rewrap", crash_on_the_tenth)
    with pytest.raises(RuntimeError):
        env.vault.keys.finish(env.admin)
    # the first batch committed, the second rolled back whole: nothing half-written
    assert env.vault.keys.pending(env.admin) == len(payloads(env)) - 7
    for path, value in values.items():  # retired and current keys both still serve reads
        assert env.vault.secrets.read(env.admin, path, reason="in a test") == value
    monkeypatch.setattr(Envelope, "rewrap", real)
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for path, value in list(values.items())[:10]:
                try:
                    if env.vault.secrets.read(env.admin, path, reason="in a test") != value:
                        errors.append(f"wrong value at {path}")
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        report = env.vault.keys.rotate(env.admin, new_version=False)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert report.created is False and env.vault.keys.pending(env.admin) == 0
    assert env.vault.audit.verify(env.admin).ok


def test_a_row_pointed_at_a_disabled_key_is_refused(env: Env) -> None:
    env.vault.secrets.put(env.admin, "rot/x", b"v")
    env.vault.keys.rotate(env.admin)
    with env.vault.core.transaction() as session:
        session.execute(text("UPDATE mlsecrets_secret_versions SET kek_id = :old"),
                        {"old": f"{env.settings.key_prefix}-kek-1"})
    with pytest.raises(IntegrityError):
        env.vault.secrets.read(env.admin, "rot/x", reason="in a test")


def _seed(env: Env, count: int) -> dict[str, bytes]:
    """Many secrets quickly: sealed and MAC'd exactly as the vault does, in one transaction
    (set-up only; what is under test is the rotation that follows)."""
    from airflow_provider_mlsecrets.crypto.envelope import Binding
    from airflow_provider_mlsecrets.keys import KekId
    from airflow_provider_mlsecrets.service._core import utcnow
    from airflow_provider_mlsecrets.service._integrity import seal_secret
    from airflow_provider_mlsecrets.store.models import Secret

    core, envelope = env.vault.core, env.vault.secrets.envelope
    values = {f"bulk/s{i:05d}": f"bulk-value-{i}".encode() for i in range(count)}
    with core.transaction() as session:
        vault_id, kek = core.vault_id(session), KekId(key_service.current_kek(session).label)
        now = utcnow()
        for path, value in values.items():
            secret = Secret(path=path, description="", owner="", tags="{}", latest_version=1,
                            current_version=1, created_at=now, updated_at=now)
            session.add(secret)
            session.flush()
            sealed = envelope.seal(value, Binding(vault_id, path, 1), kek)
            session.add(SecretVersion(
                secret_id=secret.id, version=1, state="current", format_version=1,
                kek_id=sealed.kek_id, wrapped_key=sealed.wrapped_key, nonce=sealed.nonce,
                ciphertext=sealed.ciphertext, created_by="seed", created_at=now))
            seal_secret(core.keys, vault_id, secret)
    return values


def _read_until(env: Env, values: dict[str, bytes], stop_file: str) -> list[str]:
    """A second process reading random secrets until told to stop; returns what went wrong."""
    import os
    import random

    from airflow_provider_mlsecrets.service import Vault

    vault, problems, reads = Vault(env.settings), [], 0
    paths = list(values)
    while not os.path.exists(stop_file) and reads < 5000:
        path = random.choice(paths)
        try:
            if vault.secrets.read(env.admin, path, reason="in a test") != values[path]:
                problems.append(f"wrong value at {path}")
        except Exception as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
        reads += 1
    return problems if reads else ["the reader never read"]


def test_rotating_ten_thousand_data_keys_while_another_process_reads(env: Env,
                                                                    tmp_path: object) -> None:
    import multiprocessing
    from pathlib import Path

    values = _seed(env, 10_000)
    stop = Path(str(tmp_path)) / "stop"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    reader = context.Process(  # forked: nothing is pickled on the way in
        target=lambda: queue.put(_read_until(env, values, str(stop))))
    reader.start()
    try:
        report = env.vault.keys.rotate(env.admin)
    finally:
        stop.touch()
    problems = queue.get(timeout=300)
    reader.join(timeout=60)
    assert problems == []
    assert report.rewrapped == 10_000 and env.vault.keys.pending(env.admin) == 0
    for path in list(values)[::997]:
        assert env.vault.secrets.read(env.admin, path, reason="in a test") == values[path]


def test_a_damaged_data_key_is_set_aside_and_the_rest_rotates(env: Env) -> None:
    env.vault.secrets.put(env.admin, "rot/bad", b"bad")
    env.vault.secrets.put(env.admin, "rot/good", b"good")
    with env.vault.core.transaction() as session:
        row = session.scalars(select(SecretVersion).order_by(SecretVersion.id)).first()
        assert row is not None and row.wrapped_key is not None
        row.wrapped_key = bytes([row.wrapped_key[0] ^ 1]) + row.wrapped_key[1:]
    report = env.vault.keys.rotate(env.admin)
    assert (report.rewrapped, report.failed, report.disabled) == (1, ["rot/bad v1"], [])
    assert env.vault.secrets.read(env.admin, "rot/good", reason="in a test") == b"good"
    prefix = env.settings.key_prefix
    states = {k.label: k.state for k in env.vault.key_list(env.admin)}
    assert states[f"{prefix}-kek-1"] == "retired"  # still referenced: stays enabled
    rewrap = [r for r in env.vault.audit.tail(env.admin, 50) if r.action == "key.rewrap"]
    assert any("rot/bad v1" in r.reason for r in rewrap)


def test_keep_retired_leaves_sealed_values_working_and_disabled_rows_are_never_rewrapped(
        env: Env) -> None:
    token = env.vault.secrets.seal(env.admin, "rot/sealed", b"still-opens")
    env.vault.secrets.put(env.admin, "rot/x", b"v")
    report = env.vault.keys.rotate(env.admin, disable=False)
    assert report.disabled == []
    assert env.vault.secrets.unseal(env.admin, "rot/sealed", token) == b"still-opens"
    report = env.vault.keys.rotate(env.admin)  # kek-3; kek-1 and kek-2 now disabled
    with env.vault.core.transaction() as session:  # a backup row under kek-1 put back
        session.execute(text("UPDATE mlsecrets_secret_versions SET kek_id = :old"),
                        {"old": f"{env.settings.key_prefix}-kek-1"})
    assert env.vault.keys.rotate(env.admin, new_version=False).rewrapped == 0
    with pytest.raises(IntegrityError):
        env.vault.secrets.read(env.admin, "rot/x", reason="in a test")


def test_reseal_moves_a_sealed_value_to_the_current_key(env: Env) -> None:
    token = env.vault.secrets.seal(env.admin, "rot/sealed", b"resealed-value")
    env.vault.keys.rotate(env.admin, disable=False)
    fresh = env.vault.secrets.reseal(env.admin, "rot/sealed", token)
    env.vault.keys.rotate(env.admin, new_version=False)  # now kek-1 is disabled
    assert env.vault.secrets.unseal(env.admin, "rot/sealed", fresh) == b"resealed-value"
    with pytest.raises(IntegrityError):
        env.vault.secrets.unseal(env.admin, "rot/sealed", token)
    with pytest.raises(IntegrityError):  # bound to its path, like any sealed value
        env.vault.secrets.reseal(env.admin, "rot/elsewhere", fresh)


CRASH_STEPS = ["KEK made in the HSM, not yet recorded", "new KEK recorded",
               "first batch re-wrapped", "all re-wrapped, nothing disabled"]


def _rotate_and_die(settings: Settings, token: str, step: str) -> None:
    """In a forked child: start a KEK rotation and kill the process (``os._exit``, no
    clean-up, no exception handler) at ``step``."""
    vault, admin = Vault(settings), Caller(token)
    keys: Any = vault.keys
    if step == CRASH_STEPS[0]:
        provider: Any = vault.core.keys
        real = provider.create_kek
        provider.create_kek = lambda version: (real(version), os._exit(0))
        keys.start(admin)
    elif step == CRASH_STEPS[1]:
        keys.start(admin)
    elif step == CRASH_STEPS[2]:
        key_service.BATCH = 4
        real_batch = keys._rewrap_batch
        keys._rewrap_batch = lambda caller, skip: (real_batch(caller, skip), os._exit(0))
        keys.rotate(admin)
    else:
        keys._disable_unused = lambda caller: os._exit(0)
        keys.rotate(admin)
    os._exit(0)


@pytest.mark.parametrize("step", CRASH_STEPS)
def test_a_key_rotation_killed_at_each_step_is_finished_by_the_next_run(env: Env,
                                                                          step: str) -> None:
    values = fill(env)
    child = multiprocessing.get_context("fork").Process(
        target=_rotate_and_die, args=(env.settings, env.admin.token, step))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    # the next run: "mlsecrets key rotate --resume", or a new rotation when the crash came
    # before the new KEK was recorded (the key already in the HSM is taken, not made again)
    vault = Vault(env.settings)
    vault.keys.rotate(env.admin, new_version=step == CRASH_STEPS[0])
    prefix = env.settings.key_prefix
    states = {k.label: k.state for k in vault.key_list(env.admin)}
    assert states == {f"{prefix}-kek-1": "disabled", f"{prefix}-kek-2": "current"}
    assert {kek for _n, _c, kek in payloads(env).values()} == {f"{prefix}-kek-2"}
    for path, value in values.items():
        assert vault.secrets.read(env.admin, path, reason="in a test") == value
    assert vault.audit.verify(env.admin, all_seals=True).ok
