"""A real MLflow tracking server on localhost (`mlflow server`, the PyPI package of the dev extra) for the tracking
tests: a sqlite backend store and a local artifact root in a temporary folder, on a free port.

Starting takes tens of seconds on a busy machine (the store's migrations), so tests share one per session.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ports import free_port

START_TIMEOUT = 180


@contextmanager
def mlflow_server(folder: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Start ``mlflow server`` on ``host`` (the plane's bridge, 10.245.0.1, for trainer pods of the e2e tests) and
    yield its URI; the server is stopped (and its log shown on failure) after."""
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    assert mlflow, "the mlflow command is missing: install the dev extra (pip install -e '.[dev]')"
    port = free_port(host)
    uri = f"http://{host}:{port}"
    log = folder / "mlflow-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [mlflow, "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--default-artifact-root", str(folder / "artifacts"), "--host", host, "--port", str(port),
             "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, f"mlflow server exited: {log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server not up in {START_TIMEOUT}s: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
