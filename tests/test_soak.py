"""A short soak on PostgreSQL (benchmarks/soak.py): readers, injectors and writers in
several processes while secrets and the KEK rotate; zero wrong values, zero lost writes,
every version decrypts, the audit chain verifies and its counts match the operations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_postgres

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


def test_a_short_soak_on_postgres_loses_nothing_and_leaks_nothing() -> None:
    server = require_postgres().split("?")[0]
    run = subprocess.run([sys.executable, str(SOAK), "--seconds", "8", "--processes", "2",
                          "--threads", "2", "--server", server, "--json"],
                         capture_output=True, text=True, timeout=600, check=False)
    result = json.loads(run.stdout[run.stdout.index("{"):])
    assert run.returncode == 0, (result, run.stderr[-2000:])
    assert result["wrong_values"] == 0 and result["lost_writes"] == 0
    assert result["undecryptable_versions"] == 0 and result["failures"] == {}
    assert result["audit_verified"] and result["audit_counts_match"]
    ops = result["operations"]
    assert ops["read"] > 0 and ops["inject"] > 0 and ops["write"] > 0
    assert result["secret rotations"] > 0 and result["KEK rotations"] == 1
    assert result["acknowledged_writes"] == ops["write"]
