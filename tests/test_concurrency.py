"""Eight threads and four forked processes writing and reading through one vault and one
SoftHSM2 token (``reset_on_fork = true``), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from airflow_provider_mlsecrets.service import Caller, Vault
from tests.conftest import Env, run_forked

ROUNDS = 12


def _work(vault: Vault, admin: Caller, worker: str) -> list[str]:
    """Write and read back a few versions; return every mismatch or error seen."""
    problems = []
    for i in range(ROUNDS):
        value = f"{worker}-value-{i}".encode()
        try:
            info = vault.secrets.put(admin, f"conc/{worker}", value)
            if vault.secrets.read(admin, f"conc/{worker}", reason="in a test") != value:
                problems.append(f"{worker}: wrong value at round {i}")
            if vault.secrets.read(admin, f"conc/{worker}", info.version,
                    reason="in a test") != value:
                problems.append(f"{worker}: wrong version value at round {i}")
        except Exception as exc:
            problems.append(f"{worker}: {type(exc).__name__}: {exc}")
    return problems


def test_eight_threads_share_one_vault(env: Env) -> None:
    problems: list[str] = []
    threads = [threading.Thread(target=lambda n=n: problems.extend(
        _work(env.vault, env.admin, f"t{n}"))) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    assert env.vault.audit.verify(env.admin, all_seals=True).records == 1 + 8 * ROUNDS * 3


def test_four_forked_processes_after_the_parent_used_the_vault(env: Env) -> None:
    env.vault.secrets.put(env.admin, "conc/parent", b"parent")  # HSM session and engine open
    results = run_forked(_work, [(env.vault, env.admin, f"p{n}") for n in range(4)])
    assert results == [[]] * 4
    assert env.vault.secrets.read(env.admin, "conc/parent", reason="in a test") == b"parent"
    assert env.vault.audit.verify(env.admin).records == 2 + 4 * ROUNDS * 3 + 1


def _lookups(vault: Vault, admin: Caller, worker: str) -> list[str]:
    """Short operations back to back, so that all four audit chains are often held and
    appends wait for chain 1's lock; return every error seen."""
    problems = []
    for i in range(40):
        try:
            vault.secrets.read(admin, "conc/shared", reason="in a test")
        except Exception as exc:
            problems.append(f"{worker} at {i}: {type(exc).__name__}: {exc}")
    return problems


def test_appends_that_wait_for_a_busy_chain_are_not_taken_for_tampering(env: Env) -> None:
    """A regression: a head read after waiting for its lock must not look unsealed (on
    PostgreSQL the head is re-read at its new version while a joined record is not)."""
    env.vault.secrets.put(env.admin, "conc/shared", b"v")
    results = run_forked(_lookups, [(env.vault, env.admin, f"p{n}") for n in range(8)])
    assert results == [[]] * 8
    assert env.vault.audit.verify(env.admin).ok
