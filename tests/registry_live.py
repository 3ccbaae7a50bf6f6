"""A real OCI registry for the export tests: go-containerregistry's (``crane registry serve``, built by
tools/registry/build.sh), started on a free port, plus ``AuthProxy``, a token-auth front for it.

The registry has no authentication of its own, so ``AuthProxy`` puts the Docker token protocol in front of it:
``/v2/`` answers 401 with a ``Bearer`` challenge, ``/token`` hands a token for the right basic credentials, and
requests with the token are forwarded to the registry unchanged. That is the part of a production registry (Docker
Hub, Harbor, GHCR) the trainer's client must get right; the storage behind it is the real registry.

``FTO_REGISTRY_ADDRESS`` sets the listen host (default 127.0.0.1; 10.245.0.1 lets pods on the plane's real node
reach it, as tests/e2e/test_export_registry.py does).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from helm_chart import require_tool, tool_bin_dir
from ports import free_port

REPO = Path(__file__).resolve().parents[1]


def crane_binary() -> Path:
    """tools/registry/build.sh's crane (FTO_REGISTRY_BIN overrides the folder); skips or fails as require_tool."""
    return require_tool(tool_bin_dir("registry", "FTO_REGISTRY_BIN") / "crane", "tools/registry/build.sh")


def listen_address() -> str:
    return os.environ.get("FTO_REGISTRY_ADDRESS", "127.0.0.1")

class Registry:
    """One registry process storing blobs under ``workdir``; ``host`` is what a reference names (host:port)."""

    def __init__(self, binary: Path, workdir: Path, address: str | None = None):
        listen = address or listen_address()
        self.host = f"{listen}:{free_port(listen)}"
        self.url = f"http://{self.host}"
        self.log = workdir / "registry.log"
        (workdir / "blobs").mkdir(exist_ok=True)  # the registry writes uploads there but does not create it
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([str(binary), "registry", "serve", "--address", self.host,
                                          "--disk", str(workdir / "blobs")], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(f"{self.url}/v2/", timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"registry not ready in 30s:\n{self.log.read_text()[-3000:]}")

    def get(self, path: str, accept: str | None = None) -> tuple[bytes, dict[str, str]]:
        request = urllib.request.Request(self.url + path, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read(), dict(response.headers)

    def manifest(self, repository: str, reference: str) -> tuple[dict, str]:
        """The manifest as stored and its digest (Docker-Content-Digest)."""
        body, headers = self.get(f"/v2/{repository}/manifests/{reference}",
                                 accept="application/vnd.oci.image.manifest.v1+json")
        return json.loads(body), headers["Docker-Content-Digest"]

    def blob(self, repository: str, digest: str) -> bytes:
        return self.get(f"/v2/{repository}/blobs/{digest}")[0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class AuthProxy:
    """Token auth (the Docker registry token protocol) in front of ``upstream`` for one user; ``seen`` records each
    request as (method, path, Authorization header)."""

    def __init__(self, upstream: Registry, user: str, password: str, address: str | None = None):
        self.upstream, self.token = upstream, secrets.token_hex(16)
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.seen: list[tuple[str, str, str]] = []
        proxy = self
        listen = address or listen_address()
        port = free_port(listen)
        self.host, self.url = f"{listen}:{port}", f"http://{listen}:{port}"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                proxy.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
                if self.path.startswith("/token"):
                    return self._reply(200, json.dumps({"token": proxy.token}).encode()) \
                        if self.headers.get("Authorization") == proxy.basic else self._reply(401, b"{}")
                if self.headers.get("Authorization") != f"Bearer {proxy.token}":
                    challenge = f'Bearer realm="{proxy.url}/token",service="fto-test"'
                    return self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(proxy.upstream.host, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host")}
                conn.request(self.command, self.path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
                self._reply(reply.status, data, {k: v for k, v in reply.getheaders()
                                                  if k.lower() not in ("content-length", "connection")})

            def _reply(self, status, body, headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _any

        self.server = ThreadingHTTPServer((listen, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
