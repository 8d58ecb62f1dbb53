"""Real local receivers for the alert tests: an SMTP server (aiosmtpd) and an HTTP
receiver (http.server), each on a real socket on 127.0.0.1, keeping what they got."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    port: int
    raw: list[bytes] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)

    def messages(self) -> list[EmailMessage]:
        return [email.message_from_bytes(r, policy=email.policy.default)
                for r in self.raw]

    def texts(self) -> list[str]:
        """Each message's subject and decoded body, as a reader sees them."""
        out = []
        for m in self.messages():
            body = m.get_body(("html", "plain"))
            out.append(f"{m['subject']}\n{body.get_content() if body else ''}")
        return out


class _Handler:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.box.raw.append(bytes(envelope.original_content or envelope.content))
        self.box.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[Mailbox]:
    box = Mailbox(port=free_port())
    controller = Controller(_Handler(box), hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@dataclass
class Inbox:
    port: int
    bodies: list[bytes] = field(default_factory=list)
    fail_next: int = 0  # answer this many requests with HTTP 500 first
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.bodies]


@contextmanager
def http_receiver() -> Iterator[Inbox]:
    inbox = Inbox(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            with inbox.lock:
                failing = inbox.fail_next > 0
                if failing:
                    inbox.fail_next -= 1
                    inbox.refused += 1
                else:
                    inbox.bodies.append(body)
            self.send_response(500 if failing else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    inbox.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield inbox
    finally:
        server.shutdown()
        server.server_close()
