"""A real HTTP/1.1 server for the step runner tests: stdlib ``http.server`` in a thread on
127.0.0.1 and a free port. It answers each request with the next scripted :class:`Answer` (the
last one repeats), records what it received, and, given a secret, checks webhook signatures
as a real receiver would (401 when the signature is wrong)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from engine_service.steps.egress import EgressPolicy


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = None  # bytes/str sent as they are; anything else as JSON
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False  # never answer: the connection stays silent until the server stops


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ScriptedServer:
    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.seen: list[Seen] = []
        self._answers: list[Answer] = [Answer(body={"ok": True})]
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, *answers: Answer) -> None:
        with self._lock:
            self._answers = list(answers)

    def next_answer(self) -> Answer:
        with self._lock:
            return self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.close_connections()
        self.httpd.server_close()  # joins the request threads
        self._thread.join()

    def wait_released(self) -> None:
        self._release.wait()


class _Server(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End kept-alive connections, so their threads stop waiting for another request."""
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client pool expects
        timeout = 30  # an idle kept-alive connection ends after this

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet test output

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            seen = Seen(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body
            )
            server.record(seen)
            answer = server.next_answer()
            if answer.hold:
                server.wait_released()
                self.close_connection = True
                return
            if server.secret is not None and not _signed(server.secret, seen):
                answer = Answer(401, {"error": "bad signature"})
            payload = answer.body
            if isinstance(payload, str):
                raw = payload.encode("utf-8")
            elif isinstance(payload, bytes):
                raw = payload
            else:
                raw = json.dumps(payload).encode("utf-8") if payload is not None else b""
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(raw)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler


def _signed(secret: str, seen: Seen) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), seen.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(seen.headers.get("x-flowledger-signature", ""), expected)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer()
    running.start()
    yield running
    running.stop()


# The server listens on loopback, which the runners refuse by default
# (engine_service/steps/egress.py): the tests install them with this policy, explicitly.
LOOPBACK = EgressPolicy.parse("127.0.0.1/32")


def free_port() -> int:
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
