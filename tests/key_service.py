"""A real, local key service that issues, checks and revokes API keys, for rotator tests.

It listens on 127.0.0.1 (a free port) in a background thread and really enforces which
keys are valid, so a test proves a key works (or stopped working) by using it:

* ``POST /keys`` (Bearer: a valid key or the admin key) issues a key: ``{"key": ...}``;
* ``GET /whoami`` and ``GET /data``: 200 for a valid Bearer key, 401 otherwise;
* ``POST /keys/revoke`` (Bearer: valid or admin) with ``{"key": ...}`` revokes it
  (404 if the service does not hold it).

Failures are injected per path: :meth:`KeyService.fail_next` answers 500 (with a body that
echoes the caller's key, to catch a client that reports bodies) and
:meth:`KeyService.redirect_next` answers 307 to the same URL.

Other test modules load the fixtures (``key_service``, ``key_service_factory``) with::

    pytest_plugins = ["tests.key_service"]

(importing the fixture functions also works but trips ruff's F401/F811).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

ADMIN_KEY = "admin-" + "A" * 8  # only ever a test value


@dataclass(frozen=True)
class Seen:
    """One request as the service saw it: who authenticated, never the key itself."""

    method: str
    path: str
    who: str  # "key", "admin", "invalid" or "none"
    status: int


class KeyService:
    """The service's state plus its HTTP server. Thread-safe: the server handles each
    request in its own thread."""

    def __init__(self, initial_key: str = "initial", *, admin_key: str | None = ADMIN_KEY,
                 key_field: str = "key", revoke_field: str = "key") -> None:
        self.admin_key = admin_key
        self.key_field = key_field
        self.revoke_field = revoke_field
        self.issued = 0
        self.revoked = 0
        self.seen: list[Seen] = []
        self.issued_keys: list[str] = []  # every key ever issued, to check none leaks
        self._keys = {initial_key}
        self._failures: Counter[str] = Counter()
        self._redirects: Counter[str] = Counter()
        self._answers: list[Any] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="key-service", daemon=True)
        self._thread.start()

    # --- for tests ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def rotator_config(self, **extra: Any) -> dict[str, Any]:
        """A complete ``http`` rotator configuration pointing at this service."""
        config: dict[str, Any] = {
            "issue_url": self.url("/keys"),
            "test_url": self.url("/whoami"),
            "revoke_url": self.url("/keys/revoke"),
        }
        config.update(extra)
        return config

    def valid(self, key: str | bytes) -> bool:
        text = key.decode() if isinstance(key, bytes) else key
        with self._lock:
            return text in self._keys

    def keys(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._keys)

    def fail_next(self, path: str, count: int = 1) -> None:
        """Answer the next ``count`` requests to ``path`` with 500 (before any effect)."""
        with self._lock:
            self._failures[path] += count

    def redirect_next(self, path: str, count: int = 1) -> None:
        """Answer the next ``count`` requests to ``path`` with a 307 to that same URL, so a
        client that followed redirects would succeed on the second request."""
        with self._lock:
            self._redirects[path] += count

    def answer_next_issue(self, value: Any) -> None:
        """Make the next successful ``POST /keys`` answer ``{key_field: value}`` (any JSON
        value) without issuing anything, to test how a client checks what it is given."""
        with self._lock:
            self._answers.append(value)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> KeyService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- request handling (called from the server's threads) ----------------------------
    def _who(self, authorization: str | None) -> tuple[str, str | None]:
        if authorization is None or not authorization.startswith("Bearer "):
            return "none", None
        token = authorization[len("Bearer "):]
        if self.admin_key is not None and secrets.compare_digest(token, self.admin_key):
            return "admin", token
        return ("key" if token in self._keys else "invalid"), token

    def _handle(self, method: str, path: str, authorization: str | None,
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            who, token = self._who(authorization)
            status, headers, payload = self._route(method, path, who, token, body)
            self.seen.append(Seen(method, path, who, status))
            return status, headers, payload

    def _route(self, method: str, path: str, who: str, token: str | None,
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        route = path.split("?", 1)[0]
        if self._redirects[route] > 0:
            self._redirects[route] -= 1
            return 307, {"Location": self.url(path)}, b""
        if self._failures[route] > 0:
            self._failures[route] -= 1
            return 500, {}, _json(
                {"error": "internal", "echo": f"{token} {body.decode(errors='replace')}"})
        if (method, route) == ("POST", "/keys"):
            if who not in ("key", "admin"):
                return 401, {}, _json({"error": "unauthorized"})
            if self._answers:
                return 201, {}, json.dumps({self.key_field: self._answers.pop(0)}).encode()
            key = "k-" + secrets.token_urlsafe(24)
            self._keys.add(key)
            self.issued += 1
            self.issued_keys.append(key)
            return 201, {}, _json({self.key_field: key})
        if (method, route) in (("GET", "/whoami"), ("GET", "/data")):
            if who != "key":
                return 401, {}, _json({"error": "unauthorized"})
            if route == "/whoami":
                return 200, {}, _json({"ok": "yes"})
            return 200, {}, _json({"rows": "1,2,3"})
        if (method, route) == ("POST", "/keys/revoke"):
            if who not in ("key", "admin"):
                return 401, {}, _json({"error": "unauthorized"})
            try:
                target = json.loads(body)[self.revoke_field]
            except (ValueError, KeyError, TypeError):
                return 400, {}, _json({"error": "bad request"})
            if target not in self._keys:
                return 404, {}, _json({"error": "no such key"})
            self._keys.discard(target)
            self.revoked += 1
            return 200, {}, _json({"revoked": "yes"})
        return 404, {}, _json({"error": "not found"})


def _json(document: dict[str, str]) -> bytes:
    return json.dumps(document).encode()


def _handler_for(service: KeyService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, payload = service._handle(
                method, self.path, self.headers.get("Authorization"), body)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler


# --- fixtures --------------------------------------------------------------------------
@pytest.fixture
def key_service_factory() -> Iterator[Callable[..., KeyService]]:
    """Start key services with any :class:`KeyService` arguments; all stop at teardown."""
    started: list[KeyService] = []

    def start(*args: Any, **kwargs: Any) -> KeyService:
        service = KeyService(*args, **kwargs)
        started.append(service)
        return service

    yield start
    for service in started:
        service.close()


@pytest.fixture
def key_service() -> Iterator[KeyService]:
    """A running key service holding the one key ``initial`` (admin key :data:`ADMIN_KEY`).
    Independent of :func:`key_service_factory`, so importing this one name is enough."""
    with KeyService("initial") as service:
        yield service
