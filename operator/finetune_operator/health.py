"""The operator's probes on --health-port: /healthz (liveness) and /readyz (this replica leads).

Kopf serves a liveness endpoint, but only while it runs, and a standby runs no Kopf (leader.py): so this server
answers on the port for every replica, and Kopf's own endpoint moves to a loopback port behind it.

- /healthz: a standby is alive while it stands by; the leader answers what Kopf's endpoint answers (200 once its
  watches run; nothing while the runner restarts stopped watches), as before leader election.
- /readyz: 200 on the leader once Kopf's startup handlers ran, 503 on a standby, naming the Lease's holder. The
  chart's readinessProbe does not use it (docs/cluster.md says why): a standby must count as available, or a
  rolling update and a node drain could never replace the leader.
"""

from __future__ import annotations

import logging
import socket
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

# Seconds for Kopf's endpoint to answer: under the chart's probe timeout (5 s).
KOPF_TIMEOUT = 4.0


class Probes:
    """What the probes answer; the runner sets ``leading`` and ``kopf_ready`` as the process goes."""

    def __init__(self, kopf_endpoint: str, holder: Callable[[], str]):
        self.kopf_endpoint = kopf_endpoint  # Kopf's liveness endpoint, on loopback
        self.holder = holder  # who holds the Lease, as last read
        self.leading = False  # this process holds the Lease (always, without leader election) and runs Kopf
        self.kopf_ready = threading.Event()  # Kopf's ready_flag: its startup handlers ran

    def liveness(self) -> tuple[int, str]:
        if not self.leading:
            return 200, "standing by"
        try:
            with urllib.request.urlopen(self.kopf_endpoint, timeout=KOPF_TIMEOUT) as answer:
                return answer.status, answer.read().decode()
        except OSError as error:  # Kopf not (yet, or no longer) serving: the watches are not running
            return 503, f"Kopf does not answer: {error}"

    def readiness(self) -> tuple[int, str]:
        if self.leading and self.kopf_ready.is_set():
            return 200, "leader"
        if self.leading:
            return 503, "leader, starting"
        return 503, f"standby; the leader is {self.holder() or 'not elected yet'}"


def loopback_endpoint() -> str:
    """An address for Kopf's liveness endpoint that only this server reads: a free port on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/healthz"


def serve(port: int, probes: Probes) -> ThreadingHTTPServer:
    """Answer /healthz and /readyz on ``port`` from a thread of their own."""
    routes = {"/healthz": probes.liveness, "/readyz": probes.readiness}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, body = routes[self.path]() if self.path in routes else (404, "not found")
            data = (body + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - a probe every few seconds
            log.debug(format, *args)

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
