"""The floor for bench/operator_scale.py: a controller that watches FineTuneJobs and POSTs one Job for each, and
does nothing else (no status, no Events, no children's watches). Bench-only.

Run by ``_operator_counted.py`` (FTO_MINIMAL_CONTROLLER=1) with the operator's arguments, so its requests are
counted the same way; it answers /healthz on --health-port as the operator does, and creates Jobs from as many
threads as the operator's queue of new FineTuneJobs has (its --workers). The Job is the one the operator makes for
the FineTuneJob's first attempt, byte for byte (``render.build_attempt`` with the operator's settings from the same
arguments, rendered once, see job_template), so the API server, and what follows a Job's creation (the Job
controller, the scheduler, KWOK), handle the same object in both phases and the ratio is the operator's own cost,
not the size of its Job. (Until 2026-12-05 it POSTed a smaller Job of the same shape, ~0.7 KB against 3.7 KB:
BENCHMARKS.md §5 gives the ratio against both.)
"""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import signal
import sys
import threading

from kubernetes import config as kube_config
from kubernetes.client import ApiClient, Configuration

from finetune_operator.api import FineTuneJob
from finetune_operator.render import build_attempt
from finetune_operator.runner import build_parser, settings_from
from finetune_operator.settings import Settings


# The Job is rendered once, for a FineTuneJob with these stand-ins for name and uid, and then copied with each
# FineTuneJob's own put in: the same bytes build_attempt would give (the bench's FineTuneJobs differ only in their
# name), without the operator's rendering CPU, which is part of the operator's cost and not of the floor.
_NAME, _UID = "zz-floor-proto", "zz-floor-proto-uid"
# Called with each FineTuneJob's name when it is seen (_operator_counted.py's sightings, for the bench's timings).
SAW = None


def job_template(ftj: dict, settings: Settings) -> str:
    proto = {**ftj, "metadata": {**ftj["metadata"], "name": _NAME, "uid": _UID}}
    proto["spec"] = json.loads(json.dumps(ftj["spec"]).replace(ftj["metadata"]["name"], _NAME))
    job = next(o for o in build_attempt(FineTuneJob.model_validate(proto), 1, settings) if o["kind"] == "Job")
    return json.dumps(job)


def job_for(template: str, ftj: dict) -> dict:
    meta = ftj["metadata"]
    return json.loads(template.replace(_UID, meta["uid"]).replace(_NAME, meta["name"]))


def main(argv: list[str]) -> int:
    args, _ = build_parser().parse_known_args(argv)
    settings = settings_from(args)
    c = Configuration()
    kube_config.load_kube_config(config_file=args.kubeconfig, client_configuration=c)
    c.connection_pool_maxsize = settings.workers + 2
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

    server = http.server.ThreadingHTTPServer(("127.0.0.1", settings.health_port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    pool = concurrent.futures.ThreadPoolExecutor(settings.workers)
    [namespace] = settings.namespaces  # the bench runs it on one namespace, as the operator
    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    ftjs = f"/apis/finetune.io/v1alpha1/namespaces/{namespace}/finetunejobs"
    seen: set[str] = set()
    template: list[str] = []  # job_template's, from the first FineTuneJob seen

    def create(ftj: dict) -> None:
        call("POST", jobs, job_for(template[0], ftj))

    def saw(ftj: dict) -> None:
        if SAW is not None:
            SAW(ftj["metadata"]["name"])
        if not template:
            template.append(job_template(ftj, settings))
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
