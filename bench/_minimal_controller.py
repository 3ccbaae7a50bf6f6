"""The floor for bench/operator_scale.py: a controller that watches FineTuneJobs and POSTs one Job for each, and
does nothing else (no status, no Events, no ConfigMap, no children's watches). Bench-only.

Run by ``_operator_counted.py`` (FTO_MINIMAL_CONTROLLER=1) with the operator's arguments, so its requests are
counted the same way; it answers /healthz on --health-port as the operator does, and creates Jobs from as many
threads as the operator's work queue has (--workers, default 16). The Job is the same shape of object the
operator makes (labels, owner reference, one 100m-CPU trainer pod), so what follows its creation (the Job
controller, the scheduler, KWOK) loads the plane alike.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.server
import json
import signal
import sys
import threading

from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration


def job_for(ftj: dict, image: str) -> dict:
    meta = ftj["metadata"]
    labels = {"app.kubernetes.io/managed-by": "finetune-operator", "finetune.io/job": meta["name"],
              "finetune.io/attempt": "1"}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"{meta['name']}-a1", "namespace": meta["namespace"], "labels": labels,
                         "ownerReferences": [{"apiVersion": ftj["apiVersion"], "kind": ftj["kind"], "name": meta["name"],
                                              "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "trainer", "image": image,
                                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}}}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--health-port", type=int, required=True)
    p.add_argument("--trainer-image", default="trainer")
    p.add_argument("--workers", type=int, default=16)
    args, _ = p.parse_known_args(argv)
    c = Configuration()
    kube_config.load_kube_config(config_file=args.kubeconfig, client_configuration=c)
    c.connection_pool_maxsize = args.workers + 2
    api = ApiClient(c)

    def call(method: str, path: str, body=None, query=None, stream: bool = False):
        req = api.param_serialize(method, path, query_params=list((query or {}).items()),
                                  header_params={"Accept": "application/json", "Content-Type": "application/json"},
                                  body=body, auth_settings=["BearerToken"])
        resp = api.call_api(*req, _request_timeout=(5, 3600 if stream else 60))
        if stream:
            return resp.response
        data = resp.read()
        if not 200 <= resp.status < 300 and resp.status != 409:  # 409: made already
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
        return json.loads(data or b"{}")

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.health_port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pool = concurrent.futures.ThreadPoolExecutor(args.workers)
    jobs = f"/apis/batch/v1/namespaces/{args.namespace}/jobs"
    ftjs = f"/apis/finetune.io/v1alpha1/namespaces/{args.namespace}/finetunejobs"
    seen: set[str] = set()

    def create(ftj: dict) -> None:
        call("POST", jobs, job_for(ftj, args.trainer_image))

    def saw(ftj: dict) -> None:
        if ftj["metadata"]["name"] not in seen:
            seen.add(ftj["metadata"]["name"])
            pool.submit(create, ftj)

    listed = call("GET", ftjs)
    for ftj in listed["items"]:
        saw({**ftj, "apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob"})
    rv = listed["metadata"]["resourceVersion"]
    while True:
        resp = call("GET", ftjs, query={"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true"},
                    stream=True)
        buffer = b""
        for chunk in resp.stream(amt=None, decode_content=True):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    event = json.loads(line)
                    rv = event["object"].get("metadata", {}).get("resourceVersion", rv)
                    if event["type"] == "ADDED":
                        saw(event["object"])
        resp.release_conn()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
