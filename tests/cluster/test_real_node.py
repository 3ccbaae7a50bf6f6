"""The local plane's real node (tools/k8s/node/node.sh): a kubelet with containerd, runc, the CNI bridge, kube-proxy
and CoreDNS, registered beside the KWOK nodes. Real pods run there: their logs are read through the API server,
they reach the API server through the `kubernetes` Service, resolve Service and headless-Service pod names, reach
each other, and get SIGTERM when deleted. The test image is Debian's busybox-static, built by tools/k8s/build.sh.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Iterator

import pytest

from cluster.conftest import ControlPlane, _truthy

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NODE = "fto-node-0"
NODE_IP = "10.245.0.1"
DNS_IP = "10.96.0.10"
LABEL, VALUE = "finetune.io/node", "real"
BUSYBOX = "localhost/fto/busybox:1"
ON_REAL_NODE = {
    "nodeSelector": {LABEL: VALUE},
    "tolerations": [{"key": LABEL, "operator": "Equal", "value": VALUE, "effect": "NoSchedule"}],
}


@pytest.fixture(scope="module")
def node(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The plane, with its real node Ready and the busybox image loaded into the node's containerd."""
    proc = control_plane.kubectl("get", "node", NODE, "-o", "json", check=False)
    if proc.returncode != 0:
        message = (f"the local plane runs without its real node {NODE} (started with --no-real-node or "
                   "FTO_K8S_REAL_NODE=0?): `tools/k8s/cluster.sh down && tools/k8s/cluster.sh up` starts it")
        if _truthy("FTO_REQUIRE_CLUSTER"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    control_plane.wait_for(lambda: _ready(control_plane.kubectl_json("get", "node", NODE)), timeout=90,
                           what=f"{NODE} Ready")
    out = control_plane.load_images(control_plane.images_dir / "busybox.oci.tar")
    assert BUSYBOX in out
    yield control_plane


def _ready(obj: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj["status"].get("conditions", []))


def pod(name: str, script: str, *, labels: dict | None = None, grace: int = 5, **spec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            **ON_REAL_NODE,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                            "command": ["sh", "-c", script]}],
            **spec,
        },
    }


def phase(cp: ControlPlane, ns: str, name: str) -> str:
    return cp.kubectl("get", "pod", name, "-n", ns, "-o", "jsonpath={.status.phase}").stdout


def run_to_end(cp: ControlPlane, ns: str, manifest: dict, timeout: float = 90) -> tuple[str, str]:
    """Apply a pod, wait until it Succeeded or Failed; returns (phase, log)."""
    cp.apply(manifest, namespace=ns)
    name = manifest["metadata"]["name"]
    end = cp.wait_for(lambda: (p := phase(cp, ns, name)) in ("Succeeded", "Failed") and p, timeout=timeout,
                      what=f"pod {name} to finish")
    return end, cp.kubectl("logs", "-n", ns, name).stdout


def test_node_is_ready_labelled_and_tainted(node: ControlPlane) -> None:
    obj = node.kubectl_json("get", "node", NODE)
    assert _ready(obj)
    assert obj["metadata"]["labels"][LABEL] == VALUE
    assert {"key": LABEL, "value": VALUE, "effect": "NoSchedule"} in obj["spec"]["taints"]
    addresses = {a["type"]: a["address"] for a in obj["status"]["addresses"]}
    assert addresses["InternalIP"] == NODE_IP
    assert obj["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    allocatable = obj["status"]["allocatable"]
    assert allocatable["cpu"] in ("2", "2000m")  # this machine's 2 cores, all to pods
    assert int(allocatable["memory"].removesuffix("Ki")) > 16 * 1024 * 1024  # 24 GiB less 2 GiB reserved
    # the KWOK nodes are still there, and Ready
    kwok = node.kubectl_json("get", "nodes", "-l", "type=kwok")["items"]
    assert kwok and all(_ready(n) for n in kwok)


def test_pod_runs_to_succeeded_and_its_log_is_read(node: ControlPlane, namespace: str) -> None:
    end, log = run_to_end(node, namespace, pod("hello", "echo hello from $(hostname); uname -s"))
    assert end == "Succeeded", log
    assert "hello from hello" in log and "Linux" in log
    status = node.kubectl_json("get", "pod", "hello", "-n", namespace)["status"]
    assert status["podIP"].startswith("10.245.0.")
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert node.kubectl_json("get", "pod", "hello", "-n", namespace)["spec"]["nodeName"] == NODE


def test_exit_code_and_termination_message_are_reported(node: ControlPlane, namespace: str) -> None:
    end, _ = run_to_end(node, namespace, pod("fails", "echo '{\"reason\": \"bad\"}' > /dev/termination-log; exit 3"))
    assert end == "Failed"
    terminated = node.kubectl_json("get", "pod", "fails", "-n", namespace)["status"]["containerStatuses"][0]["state"][
        "terminated"]
    assert terminated["exitCode"] == 3
    assert json.loads(terminated["message"]) == {"reason": "bad"}


def test_pod_without_the_toleration_stays_off_the_real_node(node: ControlPlane, namespace: str) -> None:
    manifest = pod("plain", "true")
    for key in ON_REAL_NODE:
        manifest["spec"].pop(key)
    node.apply(manifest, namespace=namespace)
    node_name = node.wait_for(
        lambda: node.kubectl("get", "pod", "plain", "-n", namespace, "-o", "jsonpath={.spec.nodeName}").stdout,
        timeout=30, what="pod plain scheduled")
    assert node_name.startswith("kwok-node-")


def test_kubernetes_service_and_cluster_dns_from_a_pod(node: ControlPlane, namespace: str) -> None:
    script = (
        "nslookup kubernetes.default.svc.cluster.local; "
        # The API server answers a plain HTTP request on its TLS port with a 400: reached through the Service
        # ClusterIP (kube-proxy DNAT to the bridge address). busybox's wget has no TLS the API server accepts
        # (and its -T segfaults in Debian's static build).
        "wget -qO- http://kubernetes.default.svc:443/ 2>&1; "
        "echo; cat /etc/resolv.conf; "
        # nothing outside the cluster is resolved: there is no forwarder to the machine's resolver
        "nslookup example.com 2>&1 || echo external-not-resolved"
    )
    end, log = run_to_end(node, namespace, pod("dns", script))
    assert end == "Succeeded", log
    assert "Address: 10.96.0.1" in log, log
    assert "400 Bad Request" in log, log
    assert f"nameserver {DNS_IP}" in log and f"search {namespace}.svc.cluster.local" in log, log
    assert "external-not-resolved" in log or "can't find example.com" in log, log


def test_headless_service_names_and_pod_to_pod_traffic(node: ControlPlane, namespace: str) -> None:
    """What torchrun's rendezvous of an Indexed Job needs: `<hostname>.<subdomain>` names from a headless Service,
    and traffic between pods; plus a ClusterIP Service to a pod, and the host (where a local operator runs)
    reaching a pod IP."""
    node.apply([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "workers"},
         "spec": {"clusterIP": "None", "selector": {"app": "workers"}, "publishNotReadyAddresses": True}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "workers"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ], namespace=namespace)
    server = pod("worker-0", "mkdir -p /tmp/www && echo rank0 > /tmp/www/index.html && "
                 "exec httpd -f -p 8080 -h /tmp/www", labels={"app": "workers"}, hostname="worker-0",
                 subdomain="workers")
    node.apply(server, namespace=namespace)
    node.wait_for(lambda: phase(node, namespace, "worker-0") == "Running", timeout=60, what="worker-0 Running")
    ip = node.kubectl("get", "pod", "worker-0", "-n", namespace, "-o", "jsonpath={.status.podIP}").stdout
    fqdn = f"worker-0.workers.{namespace}.svc.cluster.local"
    script = (
        f"for i in $(seq 30); do nslookup {fqdn} >/tmp/ns 2>&1 && break; sleep 1; done; cat /tmp/ns; "
        f"wget -qO- http://{fqdn}:8080/ && "
        f"wget -qO- http://web.{namespace}.svc.cluster.local/ && echo via-service"
    )
    end, log = run_to_end(node, namespace, pod("client", script))
    assert end == "Succeeded", log
    assert f"Name:\t{fqdn}" in log and f"Address: {ip}" in log, log
    assert log.count("rank0") == 2 and "via-service" in log, log
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as response:  # host -> pod, over the bridge
        assert response.read().decode().strip() == "rank0"


def test_deleted_pod_gets_sigterm_within_its_grace_period(node: ControlPlane, namespace: str) -> None:
    script = ("trap 'echo got SIGTERM; sleep 2; echo saved; exit 0' TERM; echo started; "
              "while true; do sleep 0.2; done")
    node.apply(pod("victim", script, grace=30), namespace=namespace)
    node.wait_for(lambda: "started" in node.kubectl("logs", "-n", namespace, "victim", check=False).stdout,
                  timeout=60, what="victim started")
    t0 = time.monotonic()
    node.kubectl("delete", "pod", "victim", "-n", namespace, "--wait=false")
    log = node.wait_for(
        lambda: (out := node.kubectl("logs", "-n", namespace, "victim", check=False).stdout) and "saved" in out and out,
        timeout=30, interval=0.2, what="victim to log the SIGTERM it trapped")
    assert "got SIGTERM" in log
    node.wait_for(lambda: node.kubectl("get", "pod", "victim", "-n", namespace, check=False).returncode != 0,
                  timeout=30, what="victim gone")
    # it exited by itself after its trap (about 2 s), well inside the 30 s grace period
    assert time.monotonic() - t0 < 25


def test_load_image_is_idempotent(node: ControlPlane) -> None:
    t0 = time.monotonic()
    out = node.load_images(node.images_dir / "busybox.oci.tar", node.images_dir / "pause.oci.tar")
    assert out.count("already loaded") == 2, out
    assert time.monotonic() - t0 < 10
