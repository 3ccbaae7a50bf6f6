"""The operator (``python -m finetune_operator.runner ARGS``), or with FTO_MINIMAL_CONTROLLER=1 the bench's
minimal controller (``_minimal_controller.py``), with every request it sends to the API server
counted on the client side, for bench/operator_scale.py. Nothing in the operator changes: urllib3 (the
kubernetes client under kube.py) and aiohttp (Kopf's watches and patches) are wrapped before it starts.

FTO_TRACEMALLOC=N (frames) also writes tracemalloc's top allocations to FTO_COUNTS_FILE.mem.txt on SIGUSR1 and at
exit (a diagnostic run: tracing slows the operator down).

FTO_SIGHTINGS_FILE: a line ``NAME TIME seen`` when each FineTuneJob first reaches the controller's code (the
operator's Kopf handler, the minimal controller's watch loop), and ``NAME TIME post`` when the POST of its Job is
handed to urllib3, for bench/_audit.py's split of apply -> Job.

Counts go to the JSON file named by FTO_COUNTS_FILE, rewritten every second and at exit:
``{"VERB resource[/subresource] (client)": n}`` with the API server's verbs (LIST, GET, WATCH, CREATE, PATCH,
UPDATE, DELETE). Requests to other hosts (the trainers' metrics endpoints) count as ``SCRAPE``.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

COUNTS: collections.Counter = collections.Counter()
LOCK = threading.Lock()
API_HOST: str | None = None


def verb_and_resource(method: str, url: str) -> str:
    parts = urlsplit(url)
    segs = [s for s in parts.path.split("/") if s]
    query = parse_qs(parts.query)
    if segs[:1] == ["api"]:
        rest = segs[2:]
    elif segs[:1] == ["apis"]:
        rest = segs[3:]
    else:
        return f"{method} {parts.path}"
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    resource = rest[0] if rest else ""
    named = len(rest) >= 2
    sub = "/" + rest[2] if len(rest) >= 3 else ""
    if method == "GET":
        verb = "WATCH" if query.get("watch", ["false"])[0] in ("true", "1") else ("GET" if named else "LIST")
    else:
        verb = {"POST": "CREATE", "PUT": "UPDATE"}.get(method, method)
    return f"{verb} {resource}{sub}"


def count(client: str, method: str, url: str, host: str | None) -> None:
    if API_HOST and host and API_HOST not in host:
        key = f"SCRAPE ({client})"
    else:
        key = f"{verb_and_resource(method, url)} ({client})"
    with LOCK:
        COUNTS[key] += 1


def dump() -> None:
    path = os.environ.get("FTO_COUNTS_FILE")
    if not path:
        return
    with LOCK:
        data = dict(COUNTS)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


class Sightings:
    """When each FineTuneJob's first watch event reached the controller (FTO_SIGHTINGS_FILE)."""

    def __init__(self, path: str | None):
        self.file = open(path, "a", buffering=1) if path else None
        self.seen: set[tuple[str, str]] = set()

    def saw(self, name: str, what: str = "seen") -> None:
        if self.file is not None and (name, what) not in self.seen:
            self.seen.add((name, what))
            self.file.write(f"{name} {time.time()} {what}\n")


SIGHTINGS = Sightings(os.environ.get("FTO_SIGHTINGS_FILE"))


def watch_operator_handler() -> None:
    """Wrap the operator's FineTuneJob handler before the runner registers it with Kopf."""
    from finetune_operator import handlers

    handler = handlers.finetunejob_seen

    async def finetunejob_seen(**kwargs):
        SIGHTINGS.saw(kwargs["name"])
        return await handler(**kwargs)

    handlers.finetunejob_seen = finetunejob_seen


def install() -> None:
    global API_HOST
    import aiohttp
    import urllib3.connectionpool

    API_HOST = os.environ.get("FTO_API_HOSTPORT")
    original = urllib3.connectionpool.HTTPConnectionPool.urlopen

    owner = re.compile(rb'"finetune\.io/job": *"([^"]+)"')

    def urlopen(self, method, url, *args, **kwargs):
        count("kubernetes-client", method, url, f"{self.host}:{self.port}")  # a retry is a request too
        if SIGHTINGS.file is not None and method == "POST" and url.split("?")[0].endswith("/jobs"):
            body = kwargs.get("body") or b""
            found = owner.search(body if isinstance(body, bytes) else body.encode())
            if found:
                SIGHTINGS.saw(found.group(1).decode(), "post")
        return original(self, method, url, *args, **kwargs)

    urllib3.connectionpool.HTTPConnectionPool.urlopen = urlopen
    original_request = aiohttp.ClientSession._request

    async def _request(self, method, str_or_url, *args, **kwargs):
        url = str(str_or_url)
        if kwargs.get("params"):
            from urllib.parse import urlencode

            url += ("&" if "?" in url else "?") + urlencode({k: str(v) for k, v in dict(kwargs["params"]).items()})
        count("kopf", method, url, urlsplit(url).netloc)
        return await original_request(self, method, str_or_url, *args, **kwargs)

    aiohttp.ClientSession._request = _request

    def loop() -> None:
        while True:
            time.sleep(1)
            dump()

    threading.Thread(target=loop, daemon=True, name="request-counts").start()
    atexit.register(dump)
    frames = int(os.environ.get("FTO_TRACEMALLOC", "0") or 0)
    if frames:  # diagnostics only: tracing slows the operator down
        import tracemalloc

        tracemalloc.start(frames)
        import signal

        # SIGUSR1 writes the snapshot (the bench sends it while the backlog is at its largest); exit writes one too.
        signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=dump_memory, daemon=True).start())
        atexit.register(dump_memory)


def dump_memory() -> None:
    import tracemalloc

    path = os.environ.get("FTO_COUNTS_FILE", "counts.json") + ".mem.txt"
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {current / 2**20:.1f} MiB, traced peak {peak / 2**20:.1f} MiB"]
    for title, key in (("by line", "lineno"), ("by traceback", "traceback")):
        lines.append(f"--- top 25 {title}")
        for stat in snapshot.statistics(key)[:25]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d} blocks")
            lines.extend("    " + str(frame) for frame in (stat.traceback if key == "traceback" else stat.traceback[:1]))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    install()
    if os.environ.get("FTO_MINIMAL_CONTROLLER"):  # the bench's floor, counted the same way
        import _minimal_controller as controller

        controller.SAW = SIGHTINGS.saw
    else:
        from finetune_operator import runner as controller

        watch_operator_handler()

    sys.exit(controller.main(sys.argv[1:]))
