"""kube.py's streaming answers (a pod's log, a watch) over real HTTP, from a local server that streams chunked
answers as the API server does: events decoded as they arrive, and a stream left early does not poison the pooled
connection the next request is given (left open, that connection fails with ResponseNotReady)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes.client import ApiClient, Configuration

from finetune_operator.kube import Kube, NotFound, Unavailable

EVENTS = [{"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": f"p{i}", "resourceVersion": str(i)}}}
          for i in range(40)]


class API(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        if "/log" in self.path or "watch=true" in self.path:
            if "resourceVersion=gone" in self.path:
                return self._answer(410, {"kind": "Status", "code": 410, "message": "too old resource version"})
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self._stream()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client left early, as some tests do
        else:
            self._answer(200, {"kind": "FineTuneJob", "metadata": {"name": "mrpc"}})

    def _stream(self) -> None:
        for i, event in enumerate(EVENTS):
            # An event split over two chunks, as a flush may cut it: decoding waits for the line's end.
            line = json.dumps(event).encode() + b"\n"
            for part in (line[:10], line[10:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
            # Quiet after the first event, as a watch or a log mostly is: a client that leaves then and puts
            # the connection back open finds nothing pending on it, so the pool hands it out again.
            time.sleep(0.5 if i == 0 else 0.01)
        self.wfile.write(b"0\r\n\r\n")

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


@pytest.fixture
def kube() -> Iterator[Kube]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), API)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    configuration = Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    configuration.connection_pool_maxsize = 1  # the next request gets the connection the stream used
    configuration.retries = False  # a poisoned connection must fail the test, not be retried quietly
    try:
        yield Kube(ApiClient(configuration))
    finally:
        server.shutdown()


def test_a_watch_yields_decoded_events_in_order_and_bookkeeps_nothing(kube: Kube) -> None:
    assert list(kube.watch("/api/v1/pods", "a=b", "0", 5)) == EVENTS


def test_a_watch_left_early_leaves_the_pool_usable(kube: Kube) -> None:
    stream = kube.watch("/api/v1/pods", "a=b", "0", 5)
    events = iter(stream)
    assert next(events) == EVENTS[0]
    events.close()
    assert kube.get_finetunejob("ns", "mrpc")["metadata"]["name"] == "mrpc"


def test_a_watch_closed_from_another_thread_ends_with_unavailable(kube: Kube) -> None:
    stream = kube.watch("/api/v1/pods", "a=b", "0", 5)
    seen = []
    with pytest.raises(Unavailable):
        for event in stream:
            seen.append(event)
            if len(seen) == 2:
                threading.Thread(target=stream.close).start()
    assert len(seen) < len(EVENTS)
    assert kube.get_finetunejob("ns", "mrpc")["metadata"]["name"] == "mrpc"


def test_a_watch_from_a_version_the_server_no_longer_has_is_not_found(kube: Kube) -> None:
    with pytest.raises(NotFound):
        kube.watch("/api/v1/pods", "a=b", "gone", 5)


def test_a_log_left_early_leaves_the_pool_usable(kube: Kube) -> None:
    chunks = kube.pod_log("ns", "p", "trainer", follow=True)
    assert next(chunks)
    chunks.close()
    assert kube.get_finetunejob("ns", "mrpc")["metadata"]["name"] == "mrpc"
