"""The vault as an HTTP service, for real: ``mlsecrets serve`` in its own process, clients
with a URL and a token and nothing else (no PIN, no PKCS#11 module, no database URL), the
hardening at the door, and the OpenAPI schema it publishes."""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from airflow_provider_mlsecrets.service._core import utcnow
from tests.airflow_env import BACKEND, ROOT, AirflowEnv
from tests.airflow_env import airflow_env as airflow_env  # the fixture

API_KEY = "sk-remote-canary-6f1d2e"
MLSECRETS = [sys.executable, "-m", "airflow_provider_mlsecrets.cli.main"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            assert process.poll() is None, f"{what} exited"
            time.sleep(0.3)
    pytest.fail(f"{what} did not come up in 120 s")


@dataclass
class Served:
    url: str
    air: AirflowEnv
    tokens: dict[str, Path]
    client_home: Path

    def client_env(self, token: str, **extra: str) -> dict[str, str]:
        """An environment that knows the service's URL and a token, and nothing else."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSECRETS_",
                                                                        "AIRFLOW"))}
        env.update(MLSECRETS_URL=self.url, MLSECRETS_HOME=str(self.client_home),
                   MLSECRETS_TOKEN_FILE=str(self.tokens[token]), **extra)
        return env

    def cli(self, token: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*MLSECRETS, *args], capture_output=True, text=True,
                              env=self.client_env(token), timeout=120, check=False,
                              stdin=subprocess.DEVNULL)

    def call(self, method: str, route: str, token: str | None = None,
             **kwargs: object) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, f"{self.url}/v1/{route}", headers=headers,
                             timeout=30, **kwargs)  # type: ignore[arg-type]

    def token(self, name: str) -> str:
        return self.tokens[name].read_text().strip()


@pytest.fixture(scope="module")
def served(airflow_env: AirflowEnv, tmp_path_factory: pytest.TempPathFactory,
           request: pytest.FixtureRequest) -> Iterator[Served]:
    vault, admin = airflow_env.vault, airflow_env.admin
    vault.secrets.put(admin, "ml/openai/api_key", API_KEY.encode())
    vault.secrets.put(admin, "ml/short", b"abc")
    vault.secrets.put(admin, "other/not_granted", b"never-served-canary")
    vault.access.grant(admin, "airflow-pipeline", "ml/**", ["inject"])
    base = tmp_path_factory.mktemp("served")
    tokens = {"pipeline": airflow_env.pipeline_token, "admin": base / "admin.token"}
    assert admin.token is not None
    tokens["admin"].write_text(admin.token)
    for name, role in (("viewer", "viewer"), ("revoked", "pipeline"), ("flood", "viewer")):
        tokens[name] = base / f"{name}.token"
        tokens[name].write_text(vault.access.create_principal(admin, f"http-{name}", role))
    vault.access.revoke_principal(admin, "http-revoked")
    tokens["expired"] = base / "expired.token"
    tokens["expired"].write_text(vault.access.create_principal(
        admin, "http-expired", "pipeline", utcnow() + timedelta(seconds=1)))
    port = free_port()
    env = {**airflow_env.env}
    limits = getattr(request.module, "SERVE_LIMITS", ["--rate", "20", "--burst", "40"])
    server = subprocess.Popen([*MLSECRETS, "serve", "--port", str(port), *limits], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/v1/openapi.json", server, "mlsecrets serve")
        client_home = base / "client-home"
        client_home.mkdir()
        yield Served(url=url, air=airflow_env, tokens=tokens, client_home=client_home)
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)
        assert API_KEY.encode() not in stderr


def test_a_client_with_only_a_url_and_a_token_reads_lists_and_writes(served: Served) -> None:
    env = served.client_env("admin")
    assert not any(k in env for k in ("MLSECRETS_PKCS11_MODULE", "MLSECRETS_PKCS11_PIN",
                                      "MLSECRETS_PKCS11_PIN_FILE", "MLSECRETS_DB_URL"))
    got = served.cli("admin", "secret", "get", "--reason", "in a test", "ml/openai/api_key")
    assert got.returncode == 0 and got.stdout == API_KEY, got.stderr
    assert "ml/openai/api_key" in served.cli("admin", "secret", "list", "ml/").stdout
    written = served.cli("admin", "secret", "put", "ml/remote/new", "--generate", "24")
    assert written.returncode == 0 and "version 1 written" in written.stdout
    granted = served.cli("admin", "grant", "http-viewer", "ml/remote/**", "list")
    assert granted.returncode == 0, granted.stderr
    assert "ml/remote/**" in served.cli("admin", "policy", "show", "http-viewer").stdout
    assert served.cli("admin", "revoke", "http-viewer", "ml/remote/**").returncode == 0
    point = served.client_home.parent / "checkpoint.json"
    made = served.cli("admin", "audit", "checkpoint", "--out", str(point))
    assert made.returncode == 0 and json.loads(point.read_text())["chains"], made.stderr
    point.unlink()
    verified = served.cli("admin", "audit", "verify")
    assert verified.returncode == 0 and "audit trail OK" in verified.stdout, verified.stderr
    status = json.loads(served.cli("admin", "--json", "status").stdout)
    assert status["you"] == "admin (security_engineer)"
    unsupported = served.cli("admin", "key", "rotate")
    assert unsupported.returncode == 1 and "not available through MLSECRETS_URL" in \
        unsupported.stderr
    assert list(served.client_home.iterdir()) == []  # nothing was provisioned or written
    denied = served.cli("pipeline", "secret", "get", "--reason", "in a test", "ml/openai/api_key")
    assert denied.returncode == 3 and API_KEY not in denied.stdout + denied.stderr
    records = [r for r in served.air.vault.audit.tail(served.air.admin, 30)
               if r.action == "secret.read" and r.principal == "airflow-pipeline"]
    assert records[-1].outcome == "denied" and records[-1].context["component"] == "http"


def test_a_task_gets_a_secret_injected_over_http_and_is_denied_another(
        served: Served, tmp_path: Path) -> None:
    air = served.air
    # the secrets backend too reaches the service (conn: and var: references go through it)
    env = {**air.env, **served.client_env("pipeline"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "tests" / "dags"),
           "AIRFLOW__SECRETS__BACKEND": BACKEND}
    run = subprocess.run([sys.executable, "-m", "airflow", "dags", "test",
                          "mlsecrets_inject_env"], capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    db = sqlite3.connect(air.home / "airflow.db")
    [(value,)] = db.execute("SELECT value FROM xcom WHERE dag_id = 'mlsecrets_inject_env' "
                            "AND key = 'return_value'").fetchall()
    result = json.loads(value if isinstance(value, str) else bytes(value).decode())
    assert result["lengths"]["API_KEY"] == len(API_KEY)
    assert API_KEY not in run.stdout + run.stderr
    marker = tmp_path / "child-started"
    denied = subprocess.run([sys.executable, "-m", "airflow", "dags", "test",
                             "mlsecrets_inject_denied", "-c",
                             json.dumps({"marker": str(marker)})],
                            capture_output=True, text=True, env=env, timeout=300, check=False)
    assert denied.returncode != 0 and "access denied" in denied.stdout + denied.stderr
    assert not marker.exists() and "never-served-canary" not in denied.stdout + denied.stderr
    records = air.vault.audit.tail(air.admin, 40)
    assert any(r.path == "other/not_granted" and r.outcome == "denied"
               and r.context.get("component") == "http"
               and r.context.get("claimed_dag_id") == "mlsecrets_inject_denied"
               for r in records)


def test_only_valid_tokens_pass_and_roles_still_apply(served: Served) -> None:
    nobody = served.call("POST", "read/ml/openai/api_key", json={})
    assert nobody.status_code == 401 and nobody.json()["error"] == "Unauthenticated"
    forged = served.call("POST", "read/ml/openai/api_key", "mls_" + "A" * 43, json={})
    assert forged.status_code == 401
    revoked = served.call("POST", "inject/ml/short", served.token("revoked"), json={})
    assert revoked.status_code == 401 and "revoked" in revoked.json()["message"]
    time.sleep(1.2)
    expired = served.call("POST", "inject/ml/short", served.token("expired"), json={})
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    viewer = served.call("POST", "read/ml/openai/api_key", served.token("viewer"), json={})
    assert viewer.status_code == 403 and API_KEY not in viewer.text
    pipeline = served.call("POST", "inject/ml/openai/api_key", served.token("pipeline"), json={})
    assert pipeline.status_code == 200
    assert base64.b64decode(pipeline.json()["value_b64"]).decode() == API_KEY
    for header, value in (("cache-control", "no-store"), ("x-content-type-options", "nosniff"),
                          ("x-frame-options", "DENY"), ("referrer-policy", "no-referrer")):
        assert pipeline.headers[header] == value
    outcomes = {(r.principal, r.outcome) for r in
                served.air.vault.audit.tail(served.air.admin, 30)}
    assert {("<unauthenticated>", "denied"), ("http-revoked", "denied"),
            ("http-expired", "denied"), ("http-viewer", "denied")} <= outcomes


def test_the_door_refuses_oversize_unbounded_and_flooding_requests(served: Served) -> None:
    admin = served.token("admin")
    big = served.call("PUT", "secrets/ml/big", admin,
                      json={"value_b64": "A" * (2 * 1024 * 1024)})
    assert big.status_code == 413
    streamed = httpx.put(f"{served.url}/v1/secrets/ml/big",
                         headers={"authorization": f"Bearer {admin}"},
                         content=iter([b'{"value_b64": "QQ=="}']), timeout=30)
    assert streamed.status_code == 411
    bad = served.call("PUT", "secrets/ml/x", admin, json={"value_b64": API_KEY + "!"})
    assert bad.status_code == 400 and API_KEY not in bad.text
    extra = served.call("PUT", "secrets/ml/x", admin, json={"value_b64": "QQ==",
                                                            "surprise": API_KEY})
    assert extra.status_code == 400 and API_KEY not in extra.text
    flood = served.token("flood")
    with httpx.Client(headers={"authorization": f"Bearer {flood}"}, timeout=30) as client, \
            ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: client.get(f"{served.url}/v1/status").status_code,
                              range(200)))
    assert codes.count(200) >= 40 and 429 in codes
    assert served.call("GET", "list", admin).status_code == 200  # per caller, not global
    # a fresh (or re-spaced) credential per request buys no new burst: failed
    # authentications are counted per address, so they cannot flood the audit trail
    before = served.air.vault.audit.count(served.air.admin)
    bogus = [served.call("GET", "list", "mls_" + secrets.token_urlsafe(32)).status_code
             for _ in range(60)]
    assert bogus.count(401) <= 20 and 429 in bogus
    assert served.air.vault.audit.count(served.air.admin) - before <= 22
    # ...while a credential that authenticated before is not locked out by its address
    assert served.call("GET", "list", admin).status_code == 200
    time.sleep(6)  # let this address's failure budget refill for the tests that follow


def test_the_openapi_schema_names_every_route(served: Served) -> None:
    schema = httpx.get(f"{served.url}/v1/openapi.json", timeout=30).json()
    paths = set(schema["paths"])
    for route in ("/v1/read/{path}", "/v1/inject/{path}", "/v1/secrets/{path}", "/v1/list",
                  "/v1/versions/{path}", "/v1/principals", "/v1/grants", "/v1/audit",
                  "/v1/audit/verify", "/v1/rotation", "/v1/rotate/{path}", "/v1/keys"):
        assert route in paths, route
