"""``http``: an API key that a service issues, tests and revokes over HTTPS.

The service, not the vault, makes the key, so ``create`` asks the service for one and the
pending key exists (and works) at the service from that moment. The engine stores it
before the next step, so a resumed rotation reuses that key rather than issuing another.
``set`` cannot undo an issue, so abandoning a rotation must pass the pending key to
``invalidate`` (which revokes any key it is given); otherwise it stays valid at the
service. A crash between the service's answer and the engine's write leaves a key no one
holds: it grants nothing, but it stays listed at the service until revoked there.

Every call ends within the configured ``timeout``, counted once for the whole call
(connect, send, headers, body): httpx's timeouts bound each read, so a service that sends one
byte just before each read times out would otherwise hold a call for ever.

Errors name the step, the method, the URL without its query string and the status code or
exception type. They never hold a key and never the response body (a service may echo the
key it was sent), and they are raised outside ``except`` blocks so no chained exception
(whose message might hold a header value) travels with them.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

import httpx

from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.rotation.interface import (
    RotationContext,
    Rotator,
    RotatorError,
    config_int,
    config_str,
)

#: Hosts to which plain ``http://`` is allowed: the key never leaves the machine.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_KEY_CHARS = 4096
#: The issue response is read up to this size; a key service has no reason to send more.
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class _Endpoint:
    url: str
    shown: str  # scheme://host[:port]/path: no userinfo, query or fragment
    loopback: bool  # plain http:// to this machine


def _endpoint(config: Mapping[str, Any], key: str) -> _Endpoint:
    raw = config_str(config, key)
    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL:
        url = None
    if url is None or not url.host:
        raise InvalidInput(f"rotator configuration: {key!r} must be an absolute https:// URL")
    if url.scheme == "http" and url.host not in LOOPBACK_HOSTS:
        raise InvalidInput(
            f"rotator configuration: {key!r} must use https://: plain http:// would send API "
            f"keys unencrypted to {url.host!r}; it is allowed only to a loopback host "
            "(127.0.0.1, ::1, localhost) for development and tests")
    if url.scheme not in ("http", "https"):
        raise InvalidInput(f"rotator configuration: {key!r} must be an https:// URL")
    if url.userinfo:
        raise InvalidInput(
            f"rotator configuration: {key!r} must not hold credentials; the configuration is "
            "not secret (name a vault secret in 'admin_secret' instead)")
    path = url.raw_path.split(b"?", 1)[0].decode("ascii")
    shown = f"{url.scheme}://{url.netloc.decode('ascii')}{path}"
    return _Endpoint(raw, shown, loopback=url.scheme == "http")


class _Deadline:
    """Ends one HTTP call at a fixed time, whatever the server does.

    httpx has no overall deadline, and a blocked read cannot be cancelled from its own
    thread. So httpx's trace hook hands over each socket it connects (a duplicate of its
    descriptor is kept), and a timer shuts that socket down when time is up: the waiting
    read or write wakes at once with an error, and :attr:`expired` says why."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._done = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpx's ``trace`` extension: keep every socket the call connects."""
        if not event.endswith("connect_tcp.complete"):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        kept = sock.dup()  # the same connection, whatever httpcore does with its descriptor
        with self._lock:
            self._sockets.append(kept)
            if self.expired or self._done:
                self._shut(kept)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed by the peer
            sock.shutdown(socket.SHUT_RDWR)


def _usable(text: str) -> bool:
    """A key we can send as a bearer token and store: HTTP strips surrounding blanks and
    rejects control characters, so such a key would not be the key the service meant."""
    return (0 < len(text) <= MAX_KEY_CHARS and text.isascii() and text.isprintable()
            and text == text.strip())


def _bearer(value: bytes, what: str) -> dict[str, str]:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not _usable(text):
        raise RotatorError(
            f"http rotator: the {what} is not usable as a bearer token (it must be 1 to "
            f"{MAX_KEY_CHARS} printable ASCII characters)") from None
    return {"Authorization": f"Bearer {text}"}


def _ok(status: int) -> bool:
    return 200 <= status < 300


class HttpRotator(Rotator):
    """Config: ``issue_url``, ``test_url``, ``revoke_url`` (required; ``https://``, or
    ``http://`` to a loopback host), ``admin_secret`` (optional vault path of a key that
    may issue and revoke; without it the current key is used), ``timeout`` (seconds,
    default 10, from 1 to 120), ``key_field`` (the issue response's field holding the key,
    default ``key``) and ``revoke_field`` (the revoke request's field, default ``key``).
    ``timeout`` bounds each call as a whole, not each read.

    Redirects are never followed: a redirected request would carry the key to a place the
    policy does not name, so a redirect is an error (configure the final URL)."""

    name = "http"

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.issue_endpoint = _endpoint(config, "issue_url")
        self.test_endpoint = _endpoint(config, "test_url")
        self.revoke_endpoint = _endpoint(config, "revoke_url")
        self.admin_secret: str | None = None
        if config.get("admin_secret") is not None:
            self.admin_secret = config_str(config, "admin_secret")
        self.timeout = config_int(config, "timeout", default=10, low=1, high=120)
        self.key_field = config_str(config, "key_field", default="key")
        self.revoke_field = config_str(config, "revoke_field", default="key")

    # --- the four steps -----------------------------------------------------------------
    def secret_paths(self) -> list[str]:
        return [] if self.admin_secret is None else [self.admin_secret]

    def create(self, ctx: RotationContext) -> bytes:
        """Ask the service for a new key; from here on it exists at the service."""
        status, content = self._call("issue", "POST", self.issue_endpoint,
                                     self._authority(ctx, "issue"), read=True)
        if not _ok(status):
            self._refused("issue", "POST", self.issue_endpoint, status)
        return self._issued_key(content).encode("ascii")

    def test(self, ctx: RotationContext, pending: bytes) -> None:
        """The service itself must accept ``pending``: nothing else proves the key works."""
        status, _ = self._call("test", "GET", self.test_endpoint,
                               _bearer(pending, "pending value"))
        if not _ok(status):
            self._refused("test", "GET", self.test_endpoint, status)

    def invalidate(self, ctx: RotationContext, previous: bytes) -> None:
        """Revoke ``previous``. A 404 means it is already gone, so a repeat succeeds; since
        a wrong ``revoke_url`` also answers 404, the key is then checked at ``test_url``."""
        try:
            text: str | None = previous.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None:
            raise RotatorError("http rotator: revoke: the previous value is not UTF-8 text, "
                               "so it is not a key this service issued") from None
        step = "revoke"
        status, _ = self._call(step, "POST", self.revoke_endpoint, self._authority(ctx, step),
                               body={self.revoke_field: text})
        if _ok(status):
            return
        if status == 404:
            if self._probe(previous) in (None, 401, 403):
                return
            raise RotatorError(
                f"http rotator: revoke: POST {self.revoke_endpoint.shown} answered 404 but the "
                f"previous key still works at {self.test_endpoint.shown}: check 'revoke_url'")
        # Authenticated with the very key we revoke, a refusal may mean an earlier attempt
        # already revoked it: ask the service whether it still works.
        if (status in (401, 403) and self.admin_secret is None and ctx.current == previous
                and self._probe(previous) in (401, 403)):
            return
        self._refused(step, "POST", self.revoke_endpoint, status)

    # --- helpers ------------------------------------------------------------------------
    def _authority(self, ctx: RotationContext, step: str) -> dict[str, str]:
        """The header that lets us issue and revoke: the admin key, else the current key."""
        if self.admin_secret is not None:
            return _bearer(ctx.secret(self.admin_secret), f"admin secret {self.admin_secret!r}")
        if ctx.current is None:
            raise RotatorError(
                f"http rotator: {step}: {ctx.path!r} has no current key to authenticate "
                "with; name a vault secret that holds an admin key in 'admin_secret'")
        return _bearer(ctx.current, "current value")

    def _probe(self, previous: bytes) -> int | None:
        """The test URL's status for ``previous`` (``None``: it cannot even be sent, so it
        cannot work there)."""
        try:
            text = previous.decode("ascii")
        except UnicodeDecodeError:
            return None
        if not _usable(text):
            return None
        status, _ = self._call("revoke check", "GET", self.test_endpoint,
                               {"Authorization": f"Bearer {text}"})
        return status

    def _call(self, step: str, method: str, endpoint: _Endpoint, headers: dict[str, str], *,
              body: dict[str, str] | None = None, read: bool = False) -> tuple[int, bytes]:
        """Send one request and return its status (and, with ``read``, its bounded body),
        all within ``timeout`` seconds (see :class:`_Deadline`).

        Plain http:// goes only to loopback, where the environment's proxy settings must
        not apply (a proxy would see the key in clear), so ``trust_env`` is off for it."""
        failure: str | None = None
        timed_out = False
        status = 0
        chunks: list[bytes] = []
        size = 0
        with _Deadline(self.timeout) as deadline:
            try:
                with httpx.Client(timeout=self.timeout, follow_redirects=False,
                                  trust_env=not endpoint.loopback) as client, \
                        client.stream(method, endpoint.url, headers=headers, json=body,
                                      extensions={"trace": deadline.trace}) as response:
                    status = response.status_code
                    if read and _ok(status):
                        for chunk in response.iter_bytes():
                            size += len(chunk)
                            if size > MAX_RESPONSE_BYTES:
                                failure = f"response larger than {MAX_RESPONSE_BYTES} bytes"
                                break
                            chunks.append(chunk)
            except httpx.TimeoutException:
                timed_out = True
            except Exception as exc:  # any failure: only its type may be reported
                failure = type(exc).__name__
            timed_out = timed_out or deadline.expired
        if timed_out:
            raise RotatorError(
                f"http rotator: {step}: {method} {endpoint.shown} did not finish within "
                f"{self.timeout} s (the 'timeout' setting bounds the whole call: connect, "
                "send, headers and body); check that the service is up and answers promptly"
            ) from None
        if failure is not None:
            raise RotatorError(
                f"http rotator: {step}: {method} {endpoint.shown} failed ({failure})") from None
        return status, b"".join(chunks)

    @staticmethod
    def _refused(step: str, method: str, endpoint: _Endpoint, status: int) -> NoReturn:
        reason = f"answered {status}"
        if 300 <= status < 400:
            reason += " (a redirect, which is not followed: configure the final URL)"
        raise RotatorError(f"http rotator: {step}: {method} {endpoint.shown} {reason}")

    def _issued_key(self, content: bytes) -> str:
        try:
            document: Any = json.loads(content)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            document = None
        value = document.get(self.key_field) if isinstance(document, dict) else None
        if not isinstance(value, str) or not _usable(value):
            raise RotatorError(
                f"http rotator: issue: {self.issue_endpoint.shown} answered without a usable "
                f"key in field {self.key_field!r} (1 to {MAX_KEY_CHARS} printable ASCII "
                "characters); the service may hold a key issued by this request") from None
        return value
