"""The atheris target (fuzz/parsers.py) runs, bounded, with coverage guidance: no parser
may raise anything but the package's own errors. Its first run found a crash: a duration
of 999999999 weeks overflowed datetime (now an InvalidInput)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_mlsecrets.durations import parse_duration, parse_moment
from airflow_provider_mlsecrets.errors import InvalidInput

TARGET = Path(__file__).resolve().parent.parent / "fuzz" / "parsers.py"


def test_the_parsers_survive_coverage_guided_fuzzing(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(TARGET), "-max_total_time=10",
                          f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True,
                         timeout=300, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done" in run.stderr and not list(tmp_path.glob("crash-*"))


@pytest.mark.parametrize("text", ["999999999w", "999999999d"])
def test_a_huge_duration_is_refused_not_crashed(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_moment(text, future=True)
    with pytest.raises(InvalidInput):
        parse_moment(text, future=False)
    with pytest.raises(InvalidInput, match="too long"):
        parse_duration("999999999w")  # past timedelta's range
