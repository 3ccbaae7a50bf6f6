"""The probes server (health.py) over real HTTP on loopback: a standby is alive and not ready, the leader passes
Kopf's liveness answer through and is ready once Kopf is."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from finetune_operator import health


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode().strip()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode().strip()


@pytest.fixture
def kopf_endpoint() -> Iterator[str]:
    """A stand-in for Kopf's liveness endpoint, which answers {} with 200 while Kopf runs."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/healthz"
    server.shutdown()


def serve(probes: health.Probes) -> int:
    server = health.serve(0, probes)
    return server.server_address[1]


def test_a_standby_is_alive_and_not_ready_and_names_the_leader():
    probes = health.Probes(health.loopback_endpoint(), lambda: "operator-7d9-x2")
    port = serve(probes)
    assert get(port, "/healthz") == (200, "standing by")
    assert get(port, "/readyz") == (503, "standby; the leader is operator-7d9-x2")
    assert get(port, "/other")[0] == 404


def test_the_leader_is_alive_while_kopf_answers_and_ready_once_kopf_started(kopf_endpoint: str):
    probes = health.Probes(kopf_endpoint, lambda: "me")
    probes.leading = True
    port = serve(probes)
    assert get(port, "/healthz") == (200, "{}")
    assert get(port, "/readyz") == (503, "leader, starting")
    probes.kopf_ready.set()
    assert get(port, "/readyz") == (200, "leader")


def test_the_leader_is_not_alive_while_kopf_does_not_answer():
    probes = health.Probes(health.loopback_endpoint(), lambda: "me")  # nothing listens there
    probes.leading = True
    status, body = get(serve(probes), "/healthz")
    assert status == 503 and body.startswith("Kopf does not answer")
