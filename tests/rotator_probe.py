"""A rotator for tests, installed as a real plugin (a ``.dist-info`` with an entry point on
``sys.path``) so the engine finds it the way it finds any third-party rotator.

Its "service" is a JSON file that really enforces which values are valid; a file
``fail-<method>`` in the same directory makes that method fail (with a message that echoes
the value, to prove the engine redacts it)."""

from __future__ import annotations

import fcntl
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow_provider_mlsecrets.rotation.interface import RotationContext, Rotator, RotatorError

DIST = "mlsecrets_test_rotators-1.0.dist-info"


def install(root: Path) -> Path:
    """Make ``root`` a sys.path entry that declares this module's rotator as ``probe``."""
    dist = root / DIST
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlsecrets-test-rotators\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[airflow_provider_mlsecrets.rotators]\nprobe = tests.rotator_probe:ProbeRotator\n")
    return root


class ProbeService:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = directory / "service.json"
        if not self.file.exists():
            self.file.write_text(json.dumps({"valid": [], "calls": {}}))

    @contextmanager
    def state(self) -> Iterator[dict[str, Any]]:
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads(self.file.read_text())
            yield data
            self.file.write_text(json.dumps(data))

    def accept(self, value: str) -> None:
        with self.state() as data:
            if value not in data["valid"]:
                data["valid"].append(value)

    def valid(self, value: bytes | str) -> bool:
        text = value.decode() if isinstance(value, bytes) else value
        with self.state() as data:
            return text in data["valid"]

    def calls(self) -> dict[str, int]:
        with self.state() as data:
            return dict(data["calls"])

    def fail(self, method: str, on: bool = True) -> None:
        flag = self.dir / f"fail-{method}"
        if on:
            flag.write_text("")
        else:
            flag.unlink(missing_ok=True)


class ProbeRotator(Rotator):
    name = "probe"

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.service = ProbeService(Path(config["dir"]))

    def _call(self, method: str, value: bytes | None) -> None:
        with self.service.state() as data:
            data["calls"][method] = data["calls"].get(method, 0) + 1
        if (self.service.dir / f"fail-{method}").exists():
            shown = value.decode() if value else ""
            raise RotatorError(f"probe: {method} refused value {shown}")

    def create(self, ctx: RotationContext) -> bytes:
        self._call("create", None)
        return secrets.token_hex(12).encode()

    def set(self, ctx: RotationContext, pending: bytes) -> None:
        self._call("set", pending)
        self.service.accept(pending.decode())

    def test(self, ctx: RotationContext, pending: bytes) -> None:
        self._call("test", pending)
        if not self.service.valid(pending):
            raise RotatorError("probe: the pending value is not accepted")

    def invalidate(self, ctx: RotationContext, previous: bytes) -> None:
        self._call("invalidate", previous)
        with self.service.state() as data:
            data["valid"] = [v for v in data["valid"] if v != previous.decode()]
