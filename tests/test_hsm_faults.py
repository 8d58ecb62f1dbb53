"""The HSM fails under a running vault and comes back: the vault fails closed (no value,
no record it could not seal, a clear error), then recovers without a restart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCENARIO = Path(__file__).with_name("hsm_fault_scenario.py")


def test_the_vault_fails_closed_while_the_hsm_is_gone_and_recovers(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(SCENARIO), str(tmp_path)], capture_output=True,
                         text=True, timeout=300, check=False,
                         env={**os.environ, "PYTHONPATH": str(SCENARIO.parent.parent)})
    assert run.returncode == 0, run.stderr[-3000:]
    steps = {s["step"]: s for s in map(json.loads, run.stdout.strip().splitlines())}
    for recovered in ("before", "module finalised", "token back", "PIN file updated"):
        assert steps[recovered] == {"step": recovered, "ok": True, "value": True}
    for failed, cause in (("token removed", "no token labelled 'faulty'"),
                          ("token removed, write", "no token labelled 'faulty'"),
                          ("PIN changed", "the HSM rejected the PIN")):
        step = steps[failed]
        assert step["ok"] is False and step["error"] == "AuditError", step
        assert cause in step["message"] and "nothing was done" in step["message"]
        assert step["leak"] is False
    # only what succeeded is in the trail (init, put, principal, grant, four lookups), and
    # the write made while the token was gone did not happen
    assert steps["verify"] == {"step": "verify", "ok": True, "records": 8}
