"""A real Kueue (tools/kueue/build.sh: the controller manager built from sigs.k8s.io/kueue) against the local plane,
for tests/cluster/test_kueue.py and tests/e2e/test_kueue_real_pods.py.

How it runs, and why so:
- A local process with the plane's admin kubeconfig (the plane runs no pods of its own for controllers; Kueue's
  RBAC from its manifests is not what is under test here).
- Its webhooks are real: the manager serves them on 127.0.0.1 with a self-signed certificate (IP SAN 127.0.0.1)
  made here, and the MutatingWebhookConfiguration/ValidatingWebhookConfiguration from Kueue's own
  config/components/webhook/manifests.yaml are registered with ``url`` + ``caBundle`` instead of a Service (the
  apiserver runs on this machine, so it reaches loopback). Only the webhooks of batch/v1 Jobs and of Kueue's own
  kinds are registered, and the Job ones only for namespaces labelled ``KUEUE_NAMESPACE_LABEL``: the plane is shared
  with other test sessions, whose Jobs must not depend on this process being up (failurePolicy is Fail).
- Kueue's Configuration: integrations batch/job only, manageJobsWithoutQueueName false, no leader election, no
  internal certificate management (the certificate is made here), metrics and health on free loopback ports, the
  on-demand visibility API server off (it would need an APIService and the aggregation layer's client CA).
- Without internal certificate management, Kueue v0.17 reads its metrics server's certificate from a fixed path,
  /etc/kueue/metrics/certs (where its Deployment mounts a Secret). The manager runs in a private mount namespace
  (``unshare``, root) whose /etc is an overlay with that directory added, so nothing is written to this machine's
  /etc.
- One Kueue per plane: ClusterQueues are cluster-wide and two managers without leader election would both admit;
  sessions sharing the plane take turns through a lock file in the plane's state dir.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import time
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import yaml

from helm_chart import require_tool, tool_bin_dir
from ports import free_port, free_ports

if TYPE_CHECKING:
    from conftest import ControlPlane

KUEUE_NAMESPACE_LABEL = "fto-tests/kueue"  # namespaces whose Jobs go through this Kueue's webhooks
WEBHOOK_CONFIG = "fto-kueue"  # both webhook configurations; a session that died leaves them to the next one
KUEUE_NAMESPACE = "kueue-system"  # Kueue's own namespace (its Configuration's namespace)
LOCK_TIMEOUT = 600  # seconds to wait for another session's Kueue tests to finish


def kueue_binary() -> Path:
    """tools/kueue/build.sh's kueue; skipped when not built, a failure under FTO_REQUIRE_CLUSTER=1."""
    bin_dir = tool_bin_dir("kueue", "FTO_KUEUE_BIN")
    binary = require_tool(bin_dir / "kueue", "tools/kueue/build.sh")
    require_tool(bin_dir.parent / "crds" / "kueue.x-k8s.io_workloads.yaml", "tools/kueue/build.sh")
    return binary


def _self_signed(directory: Path) -> bytes:
    """tls.crt/tls.key for 127.0.0.1 in ``directory`` (controller-runtime's webhook server reads these names)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=kueue",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(directory / "tls.key"),
                    "-out", str(directory / "tls.crt")], check=True, capture_output=True)
    return (directory / "tls.crt").read_bytes()


# Run as `sh -c _WITH_METRICS_CERT kueue WORK BINARY ARGS...` in a private mount namespace: /etc becomes an overlay
# (upper layer on a tmpfs under WORK) holding WORK's certificate at the path Kueue reads, then Kueue replaces sh.
_WITH_METRICS_CERT = """set -e
work=$1; shift
mkdir -p "$work/etc"; mount -t tmpfs fto-kueue "$work/etc"; mkdir "$work/etc/upper" "$work/etc/work"
mount -t overlay fto-kueue-etc -o "lowerdir=/etc,upperdir=$work/etc/upper,workdir=$work/etc/work" /etc
mkdir -p /etc/kueue/metrics/certs; cp "$work/tls.crt" "$work/tls.key" /etc/kueue/metrics/certs/
exec "$@"
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when pytest dies, even by SIGKILL (unshare and sh exec, so it reaches
    Kueue), so that no orphaned manager admits workloads beside the next session's."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _configuration(work: Path, webhook_port: int, health_port: int) -> Path:
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "manageJobsWithoutQueueName": False,
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(work)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }
    path = work / "kueue-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _webhooks(manifests: Path, port: int, ca: bytes) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, for batch/v1 Jobs and Kueue's kinds only, pointed at 127.0.0.1:port."""
    out = []
    for config in yaml.safe_load_all(manifests.read_text()):
        hooks = []
        for hook in config.get("webhooks") or []:
            path = hook["clientConfig"]["service"]["path"]
            job = "-batch-v1-job" in path
            if not (job or "-kueue-x-k8s-io-" in path):
                continue
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}",
                                    "caBundle": base64.b64encode(ca).decode()}
            if job:
                hook["namespaceSelector"] = {"matchLabels": {KUEUE_NAMESPACE_LABEL: "true"}}
            hooks.append(hook)
        out.append({"apiVersion": config["apiVersion"], "kind": config["kind"],
                    "metadata": {"name": WEBHOOK_CONFIG}, "webhooks": hooks})
    return out


@contextlib.contextmanager
def _plane_lock(cp: ControlPlane) -> Iterator[None]:
    with (cp.state_dir / "kueue.lock").open("a") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "another session's Kueue held the plane for too long"
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


def _webhook_serving(port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=1, context=context):
            return True
    except urllib.error.HTTPError:
        return True  # it answered: the TLS server is up
    except OSError:
        return False


@contextlib.contextmanager
def running_kueue(cp: ControlPlane, work: Path) -> Iterator[Path]:
    """Kueue's CRDs installed, its manager running and its webhooks registered; yields the manager's log."""
    binary = kueue_binary()
    root = binary.parent.parent
    with _plane_lock(cp):
        cp.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fto-tests", "-f",
                   str(root / "crds"))
        cp.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        cp.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KUEUE_NAMESPACE}})
        webhook_port, health_port = free_ports(2)
        ca = _self_signed(work)
        config = _configuration(work, webhook_port, health_port)
        log = work / "kueue.log"
        with log.open("w") as out:
            proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", _WITH_METRICS_CERT,
                                     "kueue", str(work), str(binary), f"--config={config}", "--zap-log-level=2"],
                                    stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **cp.env},
                                    preexec_fn=_die_with_parent)
        try:
            deadline = time.monotonic() + 90
            while not (_ready(health_port) and _webhook_serving(webhook_port)):
                assert proc.poll() is None, f"kueue exited {proc.returncode}:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"kueue never became ready:\n{log.read_text()[-4000:]}"
                time.sleep(0.5)
            cp.apply(_webhooks(root / "webhook" / "manifests.yaml", webhook_port, ca))
            yield log
        finally:
            for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
                cp.kubectl("delete", kind, WEBHOOK_CONFIG, "--ignore-not-found", check=False)
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            print(f"kueue log: {log}")
