"""A real HTTP receiver of notifications on localhost (a threaded http.server), for the notification tests.

It records every request (headers, body, when) and answers from a script: a list of status codes used up one
per request, then ``default``; ``hang=True`` accepts the request and never answers (until the receiver closes),
as a sink whose server is stuck does. Bind address 127.0.0.1 for tests on this machine, or the plane's bridge
(10.245.0.1) when the operator runs as a process here too (the cluster tests).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def key(self) -> str:
        return self.headers["idempotency-key"]


class Receiver:
    def __init__(self, script: list[int] | None = None, default: int = 200, hang: bool = False,
                 host: str = "127.0.0.1"):
        self.script, self.default, self.hang = list(script or []), default, hang
        self.received: list[Received] = []
        self.answered: list[int] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body,
                                                      time.monotonic()))
                    code = receiver.script.pop(0) if receiver.script else receiver.default
                if receiver.hang:
                    receiver._closing.wait()
                    return
                with receiver._lock:
                    receiver.answered.append(code)
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/hook?token=secret-in-url"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[Received]:
        """The requests answered with a 2xx."""
        with self._lock:
            answered = list(zip(self.received, self.answered))
        return [r for r, code in answered if 200 <= code < 300]

    def wait(self, count: int, timeout: float = 10, delivered: bool = True) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.delivered() if delivered else list(self.received)
            if len(got) >= count:
                return got
            assert time.monotonic() < deadline, f"{len(got)} of {count} requests after {timeout}s"
            time.sleep(0.02)
