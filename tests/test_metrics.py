"""The vault's metrics, received as Airflow's StatsD client sends them, on a real UDP socket:
every kind of vault action against a real SoftHSM2 vault (SQLite and PostgreSQL), their
names, types and tags, no value or token in any packet; a plain ``airflow connections get``
process, on StatsD and on OpenTelemetry (a real OTLP/HTTP endpoint); and a metrics backend
that raises, or cannot be reached, which changes nothing."""

from __future__ import annotations

import http.server
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update
from statsd import StatsClient  # type: ignore[import-untyped]

from airflow_provider_mlsecrets import metrics
from airflow_provider_mlsecrets.errors import IntegrityError, RotationFailed
from airflow_provider_mlsecrets.keys.softhsm import DevToken
from airflow_provider_mlsecrets.rotation.policy import RotationPolicy
from airflow_provider_mlsecrets.service import Caller
from airflow_provider_mlsecrets.settings import Settings
from airflow_provider_mlsecrets.store.engine import engine_for
from airflow_provider_mlsecrets.store.models import Secret, SecretVersion
from tests.airflow_env import PASSWORD, AirflowEnv
from tests.airflow_env import airflow_env as airflow_env  # the fixture
from tests.conftest import Database, Env, make_settings
from tests.test_audit import drop_triggers

PACKET = re.compile(r"^airflow\.(?P<name>[a-z0-9_.]+)(?P<tags>(,[a-z_]+=[^,:]+)*):"
                    r"(?P<value>-?[0-9.]+)\|(?P<type>c|ms|g)$")


class Receiver:
    """A bound UDP socket standing in for a StatsD daemon."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.raw: list[bytes] = []

    def env(self) -> dict[str, str]:
        return {"AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(self.port),
                "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
                # tags on the wire, InfluxDB style (the Datadog client sends them natively)
                "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True"}

    def drain(self, quiet: float = 0.5) -> list[dict[str, object]]:
        """Every packet the vault queued, until none came for ``quiet`` seconds, parsed."""
        assert metrics.flush(30)
        self.sock.settimeout(quiet)
        try:
            while True:
                self.raw.append(self.sock.recv(65536))
        except TimeoutError:
            pass
        out = []
        for packet in self.raw:
            text = packet.decode()
            match = PACKET.match(text)
            assert match is not None, text
            tags = dict(t.split("=", 1) for t in match["tags"].split(",")[1:])
            out.append({"name": match["name"], "type": match["type"], "tags": tags,
                        "value": float(match["value"])})
        return [p for p in out if str(p["name"]).startswith("mlsecrets.")]


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    import airflow  # noqa: F401  (the vault emits only in a process that runs Airflow)

    receiver = Receiver()
    for key, value in receiver.env().items():
        monkeypatch.setenv(key, value)
    metrics.reset()
    assert metrics.wait(30)
    yield receiver
    monkeypatch.undo()
    metrics.reset()
    receiver.sock.close()


@pytest.fixture
def settings(hsm: DevToken, tmp_path: Path, database: Database) -> Settings:
    # the HSM's high-water mark moves after every operation, so its age is measured
    return make_settings(hsm, tmp_path, database.url, audit_mark_interval=0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find(packets: list[dict[str, object]], name: str, type_: str,
         **tags: str) -> list[dict[str, object]]:
    return [p for p in packets if p["name"] == name and p["type"] == type_
            and all(p["tags"].get(k) == v for k, v in tags.items())]  # type: ignore[attr-defined]


def test_every_kind_of_vault_action_arrives_named_typed_and_tagged(
        env: Env, statsd: Receiver, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied

    from airflow_provider_mlsecrets.secrets.backend import MLSecretsBackend

    canary = "metrics-canary-" + secrets.token_hex(8)
    admin, vault = env.admin, env.vault
    vault.secrets.put(admin, "connections/warehouse", f"postgres://u:{canary}@h/db".encode())
    vault.secrets.put(admin, "connections/other", f"postgres://u:{canary}@h/other".encode())
    vault.secrets.put(admin, "ml/tampered", canary.encode())
    token = vault.access.create_principal(admin, "pipeline-a", "pipeline")
    vault.access.grant(admin, "pipeline-a", "connections/warehouse", ["inject"])
    token_file = tmp_path / "pipeline.token"
    token_file.write_text(token)
    s = env.settings
    backend = MLSecretsBackend(
        token_file=str(token_file), home=str(s.home), db_url=s.db_url,
        pkcs11_module=str(s.pkcs11_module), pkcs11_token=s.pkcs11_token,
        pkcs11_pin_file=str(s.pkcs11_pin_file), softhsm2_conf=str(s.softhsm2_conf),
        key_prefix=s.key_prefix)

    assert canary in backend.get_connection("warehouse").password
    assert backend.get_connection("absent") is None  # falls through to the next backend
    with pytest.raises(AirflowSecretsBackendAccessDenied):
        backend.get_connection("other")
    in_task = Caller(token, {"component": "task", "dag_id": "train_model", "task_id": "fit"})
    assert canary.encode() in vault.secrets.inject(in_task, "connections/warehouse")
    assert vault.secrets.read(admin, "ml/tampered", reason="metrics test") == canary.encode()
    with engine_for(s.db_url).begin() as db:
        secret_id = db.execute(select(Secret.id).where(Secret.path == "ml/tampered")).scalar_one()
        db.execute(update(SecretVersion).where(SecretVersion.secret_id == secret_id)
                   .values(ciphertext=b"\x00" * 40))
    with pytest.raises(IntegrityError):
        vault.secrets.read(admin, "ml/tampered", reason="metrics test")
    vault.secrets.put(admin, "ml/api/key", b"initial-" + canary.encode())
    vault.rotation.set_policy(admin, "ml/api/key", RotationPolicy(schedule="30d",
                                                                  rotator="random"))
    assert vault.rotation.rotate(admin, "ml/api/key").result == "rotated"
    down = f"http://127.0.0.1:{closed_port()}"
    vault.secrets.put(admin, "ml/http/key", canary.encode())
    vault.rotation.set_policy(admin, "ml/http/key", RotationPolicy(
        schedule="30d", rotator="http", config={"issue_url": f"{down}/issue",
                                                "test_url": f"{down}/test",
                                                "revoke_url": f"{down}/revoke", "timeout": 2}))
    with pytest.raises(RotationFailed):
        vault.rotation.rotate(admin, "ml/http/key")
    vault.audit.verify(admin)
    report = vault.keys.rotate(admin)
    assert report.rewrapped > 0

    packets = statsd.drain()
    # backend lookups: by kind and how they ended, each a counter and a timer
    for outcome in ("found", "not_found", "denied"):
        assert find(packets, "mlsecrets.lookup", "c", kind="connection", outcome=outcome)
        assert find(packets, "mlsecrets.lookup.duration", "ms", kind="connection",
                    outcome=outcome)
    # every vault action, by action and outcome
    assert find(packets, "mlsecrets.operation", "c", action="secret.write", outcome="allowed")
    assert find(packets, "mlsecrets.operation.duration", "ms", action="key.rewrap",
                outcome="allowed")
    # injections carry the DAG when a task asks
    assert find(packets, "mlsecrets.inject", "c", outcome="allowed", dag_id="train_model")
    assert find(packets, "mlsecrets.inject.duration", "ms", outcome="allowed",
                dag_id="train_model")
    assert find(packets, "mlsecrets.inject", "c", outcome="denied")
    assert find(packets, "mlsecrets.inject", "c", outcome="not_found")
    # plaintext reads, and the one that failed its integrity check
    assert find(packets, "mlsecrets.read", "c", outcome="allowed")
    assert find(packets, "mlsecrets.read.duration", "ms", outcome="error")
    assert find(packets, "mlsecrets.denied", "c", action="secret.inject")
    assert find(packets, "mlsecrets.error", "c", action="secret.read")
    assert find(packets, "mlsecrets.rotation", "c", outcome="rotated")
    assert find(packets, "mlsecrets.rotation", "c", outcome="failed")
    assert not find(packets, "mlsecrets.error", "c", action="rotation.fail")  # counted above
    # the audit trail: appends, verification, the HSM's mark
    appends = sum(p["value"] for p in find(packets, "mlsecrets.audit.append", "c"))
    assert appends == len(find(packets, "mlsecrets.audit.append.duration", "ms")) > 20
    # counters are summed in the process and sent once a second, not a packet per event
    writes = find(packets, "mlsecrets.operation", "c", action="secret.write",
                  outcome="allowed")
    assert sum(p["value"] for p in writes) == 5 and len(writes) < 5  # five puts above
    assert find(packets, "mlsecrets.audit.verification", "c", outcome="passed")
    assert [p["value"] for p in find(packets, "mlsecrets.audit.verification.lag", "g")] == [0]
    ages = find(packets, "mlsecrets.audit.mark.age", "g", chain="1")
    assert ages and all(float(str(p["value"])) >= 0 for p in ages)
    # key rotation: what is left to re-wrap, down to nothing
    remaining = [p["value"] for p in find(packets, "mlsecrets.key.rewrap.remaining", "g")]
    assert remaining and remaining[-1] == 0
    # no path, value or token in any packet
    wire = b"\n".join(statsd.raw)
    for needle in (canary, token, admin.token or "", "warehouse", "ml/", "connections/"):
        assert needle.encode() not in wire, needle
    assert metrics.failures() == 0


def test_a_failed_verification_says_how_long_since_the_last_pass(
        env: Env, statsd: Receiver) -> None:
    from airflow_provider_mlsecrets.errors import AuditChainBroken
    from airflow_provider_mlsecrets.store.models import AuditRecord

    env.vault.audit.verify(env.admin)
    env.vault.secrets.put(env.admin, "ml/x", b"v")
    with engine_for(env.settings.db_url).begin() as db:  # the database's owner at work
        drop_triggers(db, env.database.kind)
        db.execute(update(AuditRecord).where(AuditRecord.action == "secret.write")
                   .values(reason="rewritten"))
    with pytest.raises(AuditChainBroken):
        env.vault.audit.verify(env.admin)
    packets = statsd.drain()
    assert find(packets, "mlsecrets.audit.verification", "c", outcome="failed")
    lags = [p["value"] for p in find(packets, "mlsecrets.audit.verification.lag", "g")]
    assert lags[0] == 0 and len(lags) == 2 and float(str(lags[1])) >= 0


class RaisingStatsClient(StatsClient):  # type: ignore[misc]
    """A StatsD client (as ``[metrics] statsd_custom_client_path`` names one) that fails
    every send, as a broken backend would."""

    def _send(self, data: str) -> None:
        raise RuntimeError(f"metrics backend down ({len(data)} bytes)")


@pytest.mark.parametrize("broken", ["raises", "unreachable", "unresolvable"])
def test_a_broken_metrics_backend_changes_nothing(
        env: Env, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    import airflow  # noqa: F401

    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", "8125")
    if broken == "raises":
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_CUSTOM_CLIENT_PATH",
                           f"{__name__}.RaisingStatsClient")
    else:  # TEST-NET-1, routed nowhere; a name under .invalid, which never resolves
        monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "192.0.2.1" if broken ==
                           "unreachable" else "statsd.mlsecrets.invalid")
    metrics.reset()
    try:
        # at once, before the backend is (or fails to be) ready: nothing waits for it
        env.vault.secrets.put(env.admin, "ml/x", b"value")
        assert env.vault.secrets.inject(env.admin, "ml/x") == b"value"
        metrics.wait(5)  # a name that never resolves may keep its thread longer: no matter
        assert env.vault.secrets.inject(env.admin, "ml/x") == b"value"
        with pytest.raises(IntegrityError):  # an error is still the vault's error
            _tampered(env)
        env.vault.audit.verify(env.admin)
        metrics.flush(5)
        if broken == "raises":
            assert metrics.failures() > 0
    finally:
        monkeypatch.undo()
        metrics.reset()


def _tampered(env: Env) -> None:
    env.vault.secrets.put(env.admin, "ml/y", b"value")
    with engine_for(env.settings.db_url).begin() as db:
        secret_id = db.execute(select(Secret.id).where(Secret.path == "ml/y")).scalar_one()
        db.execute(update(SecretVersion).where(SecretVersion.secret_id == secret_id)
                   .values(ciphertext=b"\x00" * 40))
    env.vault.secrets.inject(env.admin, "ml/y")


def test_metrics_off_is_the_default_and_costs_a_check(env: Env) -> None:
    metrics.reset()
    env.vault.secrets.put(env.admin, "ml/x", b"value")
    assert not metrics.enabled() and metrics.failures() == 0


def test_a_plain_airflow_cli_process_emits_its_lookup(airflow_env: AirflowEnv) -> None:
    """``airflow connections get`` initialises no stats singleton of its own: the vault
    initialises the Task SDK's from ``[metrics]`` and the lookup arrives."""
    receiver = Receiver()
    try:
        env = receiver.env()
        got = airflow_env.run(
            "connections", "get", "uri_db", "-o", "json",
            AIRFLOW__METRICS__STATSD_ON=env["AIRFLOW__METRICS__STATSD_ON"],
            AIRFLOW__METRICS__STATSD_HOST=env["AIRFLOW__METRICS__STATSD_HOST"],
            AIRFLOW__METRICS__STATSD_PORT=env["AIRFLOW__METRICS__STATSD_PORT"],
            AIRFLOW__METRICS__STATSD_PREFIX=env["AIRFLOW__METRICS__STATSD_PREFIX"],
            AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED="True")
        assert got.returncode == 0, got.stderr[-3000:]
        packets = receiver.drain()
    finally:
        receiver.sock.close()
    assert find(packets, "mlsecrets.lookup", "c", kind="connection", outcome="found")
    assert find(packets, "mlsecrets.inject", "c", outcome="allowed")
    assert find(packets, "mlsecrets.audit.append", "c")
    assert PASSWORD.encode() not in b"".join(receiver.raw)


class OtlpReceiver:
    """A real HTTP server standing in for an OpenTelemetry collector's OTLP/HTTP endpoint
    (``POST /v1/metrics``, protobuf), keeping every request it was sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        bodies = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if self.path == "/v1/metrics":
                    bodies.append(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def points(self) -> list[tuple[str, dict[str, str], float]]:
        """Each data point received: its metric's name, its attributes, its value (a sum's
        or a gauge's value, a histogram's count)."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )
        out = []
        for body in self.bodies:
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            attributes = {a.key: a.value.string_value for a in point.attributes}
                            value = (point.count if "histogram" in kind
                                     else point.as_int or point.as_double)
                            out.append((metric.name, attributes, float(value)))
        return out


def test_an_airflow_process_on_opentelemetry_exports_the_lookup(airflow_env: AirflowEnv) -> None:
    """``[metrics] otel_on``: the vault emits through the meter provider Airflow builds, and
    what it counted arrives at the collector over OTLP/HTTP by the time the process exits
    (its last counts are sent before the meter provider's own export at exit)."""
    receiver = OtlpReceiver()
    try:
        got = airflow_env.run(
            "connections", "get", "uri_db", "-o", "json",
            AIRFLOW__METRICS__OTEL_ON="True", AIRFLOW__METRICS__OTEL_HOST="127.0.0.1",
            AIRFLOW__METRICS__OTEL_PORT=str(receiver.port),
            AIRFLOW__METRICS__OTEL_SSL_ACTIVE="False",
            AIRFLOW__METRICS__OTEL_INTERVAL_MILLISECONDS="60000")  # only the export at exit
        assert got.returncode == 0, got.stderr[-3000:]
    finally:
        receiver.server.shutdown()
    points = receiver.points()
    names = {name for name, _, _ in points}
    assert receiver.bodies, "nothing reached the collector"
    lookups = [(a, v) for n, a, v in points if n == "airflow.mlsecrets.lookup"]
    assert any(a.get("kind") == "connection" and a.get("outcome") == "found" and v >= 1
               for a, v in lookups), sorted(names)
    assert "airflow.mlsecrets.inject" in names and "airflow.mlsecrets.audit.append" in names
    assert PASSWORD.encode() not in b"".join(receiver.bodies)
