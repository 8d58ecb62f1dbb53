"""Limits and headers in front of every route: where the request comes from (the socket's
peer, see :mod:`.address`), request size, per-caller rate, failed authentications per
address and in total (:mod:`.flood`), response headers that keep values out of caches,
frames and referrers, and one log line (never a traceback) for an unexpected exception."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets.api.address import Network, Origin, origin

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.api.flood import FloodGuard

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEADERS = [
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]
HSTS = (b"strict-transport-security", b"max-age=31536000")
# what the layers of one request tell each other, in its ASGI scope
ORIGIN = "mlsecrets.origin"  # the request's Origin (set here)
KNOWN_GOOD = "mlsecrets.known_good"  # its credential authenticated lately (set here)
AUTHENTICATING = "mlsecrets.authenticating"  # the route authenticates its caller (routes)
RESERVED = "mlsecrets.reserved"  # it took a failure from the global budget (auth)
ABSORBED = "mlsecrets.absorbed"  # a failure counted in the flood summary (auth)


class RateLimiter:
    """A token bucket per key (a client address, a credential's hash), in a bounded table:
    at most ``callers`` buckets, the least recently seen dropped first."""

    def __init__(self, rate: float, burst: int, callers: int = 10_000) -> None:
        self.rate, self.burst, self.callers = rate, burst, callers
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, key: bytes, *, spend: bool = True) -> float:
        """0 if the call may go ahead (spending a token unless ``spend`` is false), else the
        seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[key] = (tokens - 1 if wait == 0 and spend else tokens, now)
            while len(self._buckets) > self.callers:
                self._buckets.popitem(last=False)
            return wait


def bearer_credential(scope: Scope) -> str | None:
    """The credential of an ``Authorization: Bearer …`` header, however it is spaced or
    cased; ``None`` without one. The one parser for every layer that reads it."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            parts: list[str] = bytes(value).decode("latin-1").split()
            if len(parts) == 2 and parts[0].lower() == "bearer":
                return parts[1]
            return None
    return None


def _credential(scope: Scope) -> bytes | None:
    """The rate-limit key of the request's credential (a hash; never the credential)."""
    credential = bearer_credential(scope)
    return None if credential is None else hashlib.sha256(credential.encode()).digest()


def request_origin(scope: Scope) -> Origin:
    """The :class:`Origin` the hardening found for this request (the bare socket peer if
    the request did not pass through it)."""
    found = scope.get(ORIGIN)
    return found if isinstance(found, Origin) else origin(scope, ())


def _reply(status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None,
           kind: str = "Refused") -> Callable[[Send], Awaitable[None]]:
    import json

    payload = json.dumps({"error": kind, "message": message, "exit_code": 1}).encode()

    async def send_it(send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()), *HEADERS, *(extra or [])]})
        await send({"type": "http.response.body", "body": payload})

    return send_it


class Hardening:
    """ASGI middleware: refuses bodies over ``max_body`` bytes with 413 (a body must declare
    its length; the server holds it to that), callers over their rate with 429 (per
    credential, and per address for failed authentications), adds :data:`HEADERS` and an
    ``X-Request-Id`` to every answer, and turns an unexpected exception into a 500 and one
    log line. ``trusted`` gives the proxies whose forwarded headers are believed (called per
    request, so the settings can load lazily); ``flood`` counts failed authentications
    against the global ceiling."""

    def __init__(self, app: ASGIApp, *, max_body: int, limiter: RateLimiter | None,
                 tls: bool = False, trusted: Callable[[], Sequence[Network]] = tuple,
                 flood: FloodGuard | None = None) -> None:
        self.app, self.max_body, self.limiter, self.tls = app, max_body, limiter, tls
        self.trusted, self.flood = trusted, flood
        # failed authentications, per address: fresh or mangled credentials buy no new
        # burst, and cannot flood the audit trail with denials
        self.failures = None if limiter is None else RateLimiter(
            max(limiter.rate / 10, 0.5), max(limiter.burst // 4, 5))
        # credentials that authenticated lately are not held back by their address's
        # failures (one bad client behind a proxy must not lock out everyone)
        self._good: OrderedDict[bytes, None] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        tagged = [(b"x-request-id", request_id.encode())]
        started = False

        async def tagged_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *HEADERS, *tagged,
                                      *([HSTS] if self.tls else [])]
            await send(message)

        try:
            await self._guard(scope, receive, tagged_send)
        except Exception as exc:
            # the exception's type only: its text may hold anything, a value included; and
            # never re-raised, or the server would log the whole traceback
            log.error("mlsecrets: internal error (%s) in %s request %s", type(exc).__name__,
                      scope.get("method", "?"), request_id)
            if not started:
                await _reply(500, "internal error", kind="InternalError")(tagged_send)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        where = origin(scope, self.trusted())
        scope[ORIGIN] = where
        address, credential = where.client.encode(), _credential(scope)
        known_good = credential is not None and credential in self._good
        scope[KNOWN_GOOD] = known_good
        if self.limiter is not None and self.failures is not None:
            wait = (0.0 if known_good else self.failures.allow(address, spend=False)) or (
                self.limiter.allow(b"a:" + credential) if credential is not None
                else self.limiter.allow(b"c:" + address))
            if wait:
                await _reply(429, "too many requests; slow down",
                             [(b"retry-after", str(int(wait) + 1).encode())])(send)
                return
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is None and (b"transfer-encoding" in headers
                               or scope.get("method") in ("POST", "PUT", "PATCH")):
            await _reply(411, "send a Content-Length header (bodies are not streamed)")(send)
            return
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _reply(413, f"the request is over {self.max_body} bytes")(send)
            return

        async def accounted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._account(scope, message.get("status", 500), address, credential)
            await send(message)

        await self.app(scope, receive, accounted_send)

    def _account(self, scope: Scope, status: int, address: bytes,
                 credential: bytes | None) -> None:
        """What an answer teaches the limits: a 401 spends the address's failure budget
        (and the global one, if it took nothing from it before and the flood summary did
        not count it) and forgets the credential; any other answer gives back what it took
        from the global budget, and a success of a route that authenticates its caller
        marks the credential good. A route that authenticates nobody (the schema) never
        does."""
        if status == 401:
            if credential is not None:
                self._good.pop(credential, None)
            if self.failures is not None:
                self.failures.allow(address)
            if self.flood is not None and not scope.get(RESERVED) \
                    and not scope.get(ABSORBED):
                self.flood.take()
            return
        if self.flood is not None and scope.get(RESERVED):
            self.flood.give_back()
        if status < 400 and credential is not None and scope.get(AUTHENTICATING):
            self._remember(credential)

    def _remember(self, credential: bytes) -> None:
        self._good[credential] = None
        self._good.move_to_end(credential)
        while len(self._good) > 10_000:
            self._good.popitem(last=False)
