"""An HTTP proxy in front of the local S3 server that misbehaves as real stores and networks
do: it answers some requests itself with an error (throttling, a server error), answers with
an error after the store has carried the request out, holds an answer longer than the
client waits for it, or cuts a body short and drops the connection."""

from __future__ import annotations

import http.client
import http.server
import itertools
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reply:
    """Answer with this error instead of the store's answer; with `after_store`, only once
    the store has carried the request out (the write happened; its answer is lost)."""

    status: int
    error: str  # the inside of <Error>...</Error>
    headers: dict[str, str] = field(default_factory=dict)
    after_store: bool = False

    @property
    def kind(self) -> str:
        code = self.error.split("<Code>", 1)[-1].split("</Code>", 1)[0]
        return f"{self.status} {code}" + (" after the store wrote" if self.after_store else "")


@dataclass(frozen=True)
class Hold:
    """Relay the request, then hold the store's answer this long before sending it."""

    seconds: float
    kind: str = "held past the client's timeout"


@dataclass(frozen=True)
class Cut:
    """Relay the request, send the store's headers (full Content-Length) and only part of
    its body, then drop the connection."""

    kind: str = "body cut short"


Fault = Reply | Hold | Cut


@dataclass(frozen=True)
class Request:
    number: int  # 1, 2, ... in the order the proxy received them
    method: str
    path: str


SLOW_DOWN = Reply(503, "<Code>SlowDown</Code><Message>Please reduce your request rate</Message>")
INTERNAL_ERROR = Reply(500, "<Code>InternalError</Code><Message>Internal error</Message>")


def every(n: int, fault: Fault, method: str | None = None) -> Callable[[Request], Fault | None]:
    """The fault for every n-th request (of one method, when given)."""
    counter = itertools.count(1)
    lock = threading.Lock()

    def answer(request: Request) -> Fault | None:
        if method is not None and request.method != method:
            return None
        with lock:
            return fault if next(counter) % n == 0 else None

    return answer


def busy_store(request: Request) -> Fault | None:
    """What a busy store sends now and then: 503 SlowDown (throttling), 500 InternalError."""
    n = request.number
    if n % 6:
        return None
    return SLOW_DOWN if n % 12 else INTERNAL_ERROR


class FlakyProxy:
    """An HTTP proxy in front of the S3 server that misbehaves when `answer` says so for a
    request (None: relay it faithfully). `injected` counts the faults by kind, and held
    answers the client stopped waiting for ("abandoned by the client")."""

    def __init__(self, upstream: str, answer: Callable[[Request], Fault | None]) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        counter = itertools.count(1)
        self.injected: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = answer(Request(next(counter), self.command, self.path))
                if fault is not None:
                    proxy.count(fault.kind)
                if isinstance(fault, Reply) and not fault.after_store:
                    self._send_error(fault)
                    return
                status, headers, data = self._forward(body)
                if isinstance(fault, Reply):
                    self._send_error(fault)
                    return
                if isinstance(fault, Hold):
                    time.sleep(fault.seconds)
                    if self._client_gone():
                        proxy.count("abandoned by the client")
                        self.close_connection = True
                        return
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                if isinstance(fault, Cut):
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                if isinstance(fault, Cut):
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    return response.status, response.getheaders(), response.read()
                finally:
                    conn.close()

            def _client_gone(self) -> bool:
                """Whether the client closed its end (it stopped waiting for the answer)."""
                try:
                    peeked = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return False
                except OSError:
                    return True
                return peeked == b""

            def _send_error(self, fault: Reply) -> None:
                payload = f"<Error>{fault.error}</Error>".encode()
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/xml")
                for key, value in fault.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def handle_one_request(self) -> None:
                # A client that gave up on a held answer has closed its end.
                try:
                    super().handle_one_request()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        # close() waits for every handler, so that the counts are complete when read.
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = False
        self.server.block_on_close = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, kind: str) -> None:
        with self._count_lock:
            self.injected[kind] += 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FlakyProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
