"""Fixtures for tests that run against the real local control plane (tools/k8s).

``control_plane`` (session scope) makes sure the binaries exist and the plane is up, then yields a
:class:`ControlPlane`. Behaviour:

* binaries missing and ``FTO_REQUIRE_CLUSTER`` unset  -> every cluster test is skipped, with the reason
* binaries missing and ``FTO_REQUIRE_CLUSTER=1`` (or ``FTO_K8S_BUILD=1``) -> ``tools/k8s/build.sh`` runs
  (a cold build is long) and a failure is an error
* plane already up (``cluster.sh status`` ok) -> reused, never torn down by the tests
* otherwise the fixture starts it with ``cluster.sh up`` and stops it with ``cluster.sh down`` when the last
  pytest session using it ends (sessions register in ``<state>/users/<pid>``), unless ``FTO_KEEP_CLUSTER=1``,
  which leaves it running and from then on treated like a plane started by hand

The state dir is ``FTO_K8S_STATE`` (default ``~/.local/state/finetune-operator/plane``), shared with a plane
started by hand, so ``tools/k8s/cluster.sh up`` once and every later test run reuses it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_TOOLS = REPO / "tools" / "k8s"
BUILD_SH = K8S_TOOLS / "build.sh"
CLUSTER_SH = K8S_TOOLS / "cluster.sh"

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the local Kubernetes control plane (tools/k8s)")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def state_dir() -> Path:
    default = Path.home() / ".local" / "state" / "finetune-operator" / "plane"
    return Path(os.environ.get("FTO_K8S_STATE") or default)


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call; str() includes stdout and stderr."""

    def __str__(self) -> str:
        return (
            f"kubectl {' '.join(self.cmd[1:])} exited {self.returncode}\n"
            f"stdout: {self.stdout}\nstderr: {self.stderr}"
        )


def wait_for(fn: Callable[[], T], timeout: float = 60, interval: float = 0.5, what: str = "condition") -> T:
    """Poll ``fn`` until it returns something truthy; return that value or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {last_exc}" if last_exc else ""))
        time.sleep(interval)


@dataclass
class ControlPlane:
    kubeconfig: Path
    bin_dir: Path
    state_dir: Path

    wait_for = staticmethod(wait_for)

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses (operator, helm, ...) that should talk to this plane as admin."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        kubeconfig: Path | str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (admin unless ``kubeconfig`` is given); text output; raises KubectlError if check."""
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    @property
    def images_dir(self) -> Path:
        """The images tools/k8s/build.sh makes for the real node (pause.oci.tar, busybox.oci.tar), beside bin/."""
        return self.bin_dir.parent / "images"

    def load_images(self, *archives: Path | str, timeout: float = 1800) -> str:
        """``cluster.sh load-image``: import OCI archives into the real node's containerd (a no-op for an image
        already there with the same digest); returns its output (one ``<ref> <digest>`` line per image)."""
        env = dict(os.environ, FTO_K8S_STATE=str(self.state_dir), FTO_K8S_BIN=str(self.bin_dir))
        cmd = [str(CLUSTER_SH), "load-image", *map(str, archives)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise AssertionError(f"cluster.sh load-image failed:\n{proc.stderr[-4000:]}")
        return proc.stdout

    def kubectl_json(self, *args: str, **kw) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json", **kw).stdout)

    def apply(self, manifest: str | dict | list, namespace: str | None = None, **kw) -> subprocess.CompletedProcess[str]:
        """kubectl apply -f - of a YAML string, a dict or a list of dicts."""
        if not isinstance(manifest, str):
            docs = manifest if isinstance(manifest, list) else [manifest]
            manifest = yaml.safe_dump_all(docs)
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=manifest, **kw)

    def mint_kubeconfig(
        self, namespace: str, service_account: str, path: Path | str, duration: str = "2h"
    ) -> Path:
        """Write a kubeconfig that authenticates as ``system:serviceaccount:<namespace>:<service_account>``
        with a token from the TokenRequest API, so the code under test has exactly RBAC's grants."""
        token = self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        user = f"system:serviceaccount:{namespace}:{service_account}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "finetune-test", "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "finetune-test",
                    "context": {"cluster": "finetune-test", "user": user, "namespace": namespace},
                }
            ],
            "current-context": "finetune-test",
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def create_namespace(self, name: str | None = None, labels: dict[str, str] | None = None) -> str:
        """Create a namespace and wait for its default ServiceAccount (pods need it to be admitted)."""
        name = name or f"t-{uuid.uuid4().hex[:8]}"
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}})
        wait_for(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
            timeout=30,
            what=f"ServiceAccount default in namespace {name}",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace without waiting for it. KWOK plays no kubelet: a pod still Running when its Job goes
        never turns terminal, so it keeps the Job controller's tracking finalizer and, Terminating forever, the
        GPUs of its KWOK node (the multi-node tests then find none). Its finalizers are dropped once the
        namespace is closed to new pods."""
        self.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
        for pod in self.kubectl("get", "pods", "-n", name, "-o", "name", check=False).stdout.split():
            self.kubectl("patch", "-n", name, pod, "--type=json", "-p",
                         '[{"op": "remove", "path": "/metadata/finalizers"}]', check=False)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    required = _truthy("FTO_REQUIRE_CLUSTER")
    state = state_dir()
    env_bin = os.environ.get("FTO_K8S_BIN")
    bin_dir = Path(env_bin) if env_bin else Path(_run([str(BUILD_SH), "--print-bin-dir"], 30).stdout.strip())

    if _run([str(BUILD_SH), "--check"], 30).returncode != 0 and not env_bin:
        if not (required or _truthy("FTO_K8S_BUILD")):
            pytest.skip(
                f"control plane binaries are not built ({bin_dir}); run tools/k8s/build.sh "
                "(or set FTO_REQUIRE_CLUSTER=1 to build them and make a missing plane an error)"
            )
        proc = subprocess.run([str(BUILD_SH)], capture_output=True, text=True, timeout=4 * 3600)
        if proc.returncode != 0:
            pytest.fail(f"tools/k8s/build.sh failed:\n{proc.stderr[-4000:]}", pytrace=False)
    if not (bin_dir / "kubectl").exists():
        msg = f"kubectl not found in {bin_dir}"
        if required:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)

    # Sessions sharing one plane register here; the last one out stops a plane that a fixture started.
    users = state / "users"
    users.mkdir(parents=True, exist_ok=True)
    me = users / str(os.getpid())
    me.touch()
    marker = state / "started-by-tests"
    cluster_env = dict(os.environ, FTO_K8S_STATE=str(state), FTO_K8S_BIN=str(bin_dir))

    status = subprocess.run([str(CLUSTER_SH), "status"], capture_output=True, text=True, timeout=60, env=cluster_env)
    if status.returncode != 0:
        up = subprocess.run([str(CLUSTER_SH), "up"], capture_output=True, text=True, timeout=300, env=cluster_env)
        if up.returncode != 0:
            me.unlink(missing_ok=True)
            pytest.fail(f"tools/k8s/cluster.sh up failed:\n{up.stderr[-6000:]}", pytrace=False)
        marker.touch()

    plane = ControlPlane(kubeconfig=state / "kubeconfig", bin_dir=bin_dir, state_dir=state)
    try:
        yield plane
    finally:
        me.unlink(missing_ok=True)
        if _truthy("FTO_KEEP_CLUSTER"):
            marker.unlink(missing_ok=True)  # kept on purpose: later sessions treat it as a plane started by hand
        else:
            others = [p for p in users.iterdir() if p.name.isdigit() and _alive(int(p.name))]
            if marker.exists() and not others:
                subprocess.run([str(CLUSTER_SH), "down"], capture_output=True, text=True, timeout=120, env=cluster_env)
                marker.unlink(missing_ok=True)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount), deleted after the test."""
    name = control_plane.create_namespace()
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)
