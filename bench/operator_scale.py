"""Operator scale on the local control plane (KWOK): N FineTuneJobs created at once, then 2,000 (issue 8).

    .venv/bin/python bench/operator_scale.py                  # 500 then 2000, on a plane of its own
    options: --counts 500,2000  --state DIR (plane state; default a fresh one under /tmp, stopped afterwards)
             --shared (use the default plane, tools/k8s/cluster.sh's, and leave it running)  --nodes 10
             --poll-interval 15 (the operator's default)  --timeout 900  --json OUT
             --profile (py-spy)  --profile-seconds S (record only the first S seconds: the creation burst)
             --profile-gil (py-spy samples only the thread holding the GIL)
             --experiment-env KEY=VALUE (extra operator environment, e.g. FINETUNE_WORKERS=32; repeatable)
             --audit (the API server's audit log splits apply -> Job into legs, in microseconds: _audit.py)

Per phase: a fresh namespace with the Helm chart's RBAC (``helm template``, per-namespace install), a claim and a
Secret, as the cluster tests set up; the operator runs as ``python -m finetune_operator.runner`` under the
chart's ServiceAccount token, wrapped by ``_operator_counted.py`` so every request it sends is counted on its
side. Then N FineTuneJobs (strategy partial, 0 GPUs, 100m CPU: the KWOK nodes hold 110 pods each) are POSTed
by 32 threads as fast as the API server takes them, while two watches (FineTuneJobs, Jobs) note the client
clock at every event. Figures:

- apply -> Job created: client clock from sending the FineTuneJob's POST to the Job's ADDED watch event
  (ms resolution), and from the objects' creationTimestamps (1 s resolution: an "0 s" there is anything below
  a second).
- apply -> Succeeded: to the watch event that shows status.phase Succeeded; and the Succeeded condition's
  lastTransitionTime minus the FineTuneJob's creationTimestamp (1 s resolution). This includes the simulated
  pod lifecycle (KWOK: scheduled, Running after ~0.5 s, Succeeded ~1-1.5 s later) and the Job controller.
- operator CPU seconds (utime+stime of the process over the phase) and peak RSS (VmHWM), RSS at the end; the CPU
  seconds of each control-plane process over the phase (which side the machine is busy with), and the operator's
  own reconcile passes per job and mean pass time (its /metrics).
- API requests per job: the operator's own (counted client-side, by verb and resource) and the API server's
  ``apiserver_request_total`` delta over the phase from every client (operator, controllers, scheduler, KWOK,
  this bench's creates and watches), divided by N; the server metric has no per-client label.
The namespace is deleted after each phase (and waited for).

The floor (issue 14): before each count's phase, the same phase against ``_minimal_controller.py`` (watches
FineTuneJobs, POSTs a Job, nothing else; same wrapper, same threads, same plane, its own namespace), which ends
when every Job exists. Our apply -> Job p50/p99 are reported as multiples of its (``vs_minimal``), with its
requests per job and peak RSS.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path[:0] = [str(REPO / "tests" / "cluster"), str(REPO / "tests")]  # operator_process, and what it imports
import _audit  # noqa: E402
from _common import machine, table  # noqa: E402

CLUSTER_SH = REPO / "tools" / "k8s" / "cluster.sh"
BUILD_SH = REPO / "tools" / "k8s" / "build.sh"
CHART = REPO / "charts" / "finetune-operator"
CRD = REPO / "crds" / "finetune.io_finetunejobs.yaml"
IMAGE = "registry.example/finetune-trainer:bench"


# ------------------------------------------------------------------------------------------------ plumbing
def sh(*cmd: str, env: dict | None = None, input: str | None = None, check: bool = True, timeout: float = 300):
    proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


class Plane:
    def __init__(self, state: Path, nodes: int, own: bool):
        self.state, self.nodes, self.own = state, nodes, own
        # KWOK nodes only: the scale run measures the operator and the API server, not pods that really run.
        self.env = dict(os.environ, FTO_K8S_STATE=str(state), FTO_K8S_NODES=str(nodes), FTO_K8S_REAL_NODE="0")
        self.bin = Path(sh(str(BUILD_SH), "--print-bin-dir").stdout.strip().splitlines()[-1])
        self.kubeconfig = state / "kubeconfig"

    def up(self) -> None:
        sh(str(CLUSTER_SH), "up", env=self.env, timeout=300)

    def down(self) -> None:
        if self.own:
            sh(str(CLUSTER_SH), "down", env=self.env, check=False)
            sh(str(CLUSTER_SH), "purge", env=self.env, check=False)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300,
                kubeconfig: Path | None = None):
        return sh(str(self.bin / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args,
                  input=input, check=check, timeout=timeout)

    def api(self, pool: int = 64):
        from kubernetes import config as kube_config
        from kubernetes.client import ApiClient, Configuration

        c = Configuration()
        kube_config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=c)
        c.connection_pool_maxsize = pool
        return ApiClient(c)


def request(api, method: str, path: str, body=None, query=None, timeout=(5, 60)):
    req = api.param_serialize(method, path, query_params=list((query or {}).items()),
                              header_params={"Accept": "application/json", "Content-Type": "application/json"},
                              body=body, auth_settings=["BearerToken"])
    resp = api.call_api(*req, _request_timeout=timeout)
    data = resp.read()
    if not 200 <= resp.status < 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
    return json.loads(data or b"{}")


class Watcher(threading.Thread):
    """Streams watch events of one collection; ``seen(event)`` gets (client time, type, object)."""

    def __init__(self, api, path: str, on_event, query: dict | None = None):
        super().__init__(daemon=True, name=f"watch {path}")
        self.api, self.path, self.on_event, self.query = api, path, on_event, query or {}
        self.stopped = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        rv = request(self.api, "GET", self.path, query={**self.query, "limit": "1"})["metadata"]["resourceVersion"]
        while not self.stopped.is_set():
            req = self.api.param_serialize(
                "GET", self.path, query_params=list({**self.query, "watch": "true", "resourceVersion": rv,
                                                     "allowWatchBookmarks": "true"}.items()),
                header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
            resp = self.api.call_api(*req, _request_timeout=(5, 3600)).response
            self.ready.set()
            buffer = b""
            try:
                for chunk in resp.stream(amt=None, decode_content=True):
                    now = time.time()
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object", {})
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            self.on_event(now, event["type"], obj)
                    if self.stopped.is_set():
                        break
            except Exception:  # noqa: BLE001 - reconnect from the last resourceVersion
                if self.stopped.is_set():
                    break
            finally:
                resp.release_conn()


def _watch_jobs(kubeconfig: str, path: str, out: str, ready, stop) -> None:
    """JobWatch's process: each Job's owner and when its ADDED event arrived, a line each."""
    from kubernetes import config as kube_config
    from kubernetes.client import ApiClient, Configuration

    c = Configuration()
    kube_config.load_kube_config(config_file=kubeconfig, client_configuration=c)
    with open(out, "a", buffering=1) as f:
        def on_job(now, kind, obj):
            owner = obj["metadata"].get("labels", {}).get("finetune.io/job")
            if owner and kind == "ADDED":
                f.write(f"{owner} {now}\n")

        watcher = Watcher(ApiClient(c), path, on_job)
        watcher.start()
        watcher.ready.wait(30)
        ready.set()
        stop.wait()
        watcher.stopped.set()


class JobWatch:
    """The bench's watch of the Jobs, in a process of its own, so that when a Job is seen is not delayed by the
    bench's other threads. In one process they share one GIL, and the FineTuneJob watch carries about four events per
    job in the operator's phase (its status writes) against one in the floor's, a bias against the operator. (It was
    not what made some 500-job runs 1.5 s slower than others: BENCHMARKS.md §5, third round.)"""

    def __init__(self, kubeconfig: Path, path: str, out: Path):
        spawn = multiprocessing.get_context("spawn")
        self.out, self.ready, self.stop_event = out, spawn.Event(), spawn.Event()
        self._seen: dict[str, float] = {}
        self._read_to = 0  # the bench polls every 0.5 s: read only the lines written since
        self.proc = spawn.Process(target=_watch_jobs, args=(str(kubeconfig), path, str(out), self.ready,
                                                            self.stop_event), daemon=True)

    def start(self) -> None:
        self.proc.start()
        self.ready.wait(60)

    def seen(self) -> dict[str, float]:
        if self.out.exists():
            with open(self.out, "rb") as f:
                f.seek(self._read_to)
                for line in f:
                    if not line.endswith(b"\n"):  # still being written
                        break
                    self._read_to += len(line)
                    owner, at = line.split()
                    self._seen.setdefault(owner.decode(), float(at))
        return self._seen

    def stop(self) -> None:
        self.stop_event.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.terminate()


def apiserver_requests(plane: Plane) -> collections.Counter:
    text = plane.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    counts: collections.Counter = collections.Counter()
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        value = float(line.rsplit(" ", 1)[1])
        key = f"{labels.get('verb')} {labels.get('resource')}" + (f"/{labels['subresource']}"
                                                                   if labels.get("subresource") else "")
        counts[key] += value
    return counts


def proc_status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM", "VmRSS")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024  # MiB
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / tick
    except (OSError, IndexError, ValueError):
        pass
    return out


def plane_cpu(plane: Plane) -> dict[str, float]:
    """CPU seconds (utime+stime) so far of each control-plane process (cluster.sh's <state>/pids/<component>.pid):
    with the operator's, says whether the API server side or the operator is what the machine is busy with."""
    out = {}
    for pid_file in sorted((plane.state / "pids").glob("*.pid")):
        try:
            out[pid_file.stem] = proc_status(int(pid_file.read_text().split()[0])).get("cpu_s", 0.0)
        except (OSError, ValueError, IndexError):
            pass
    return out


def operator_passes(metrics_port: int) -> dict[str, float]:
    """The operator's own reconcile counters (metrics.py): passes by result, and seconds spent in them."""
    import urllib.request

    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith(("finetune_operator_reconcile_total{", "finetune_operator_reconcile_duration_seconds_sum",
                            "finetune_operator_reconcile_duration_seconds_count")):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def smaps_summary(pid: int, top: int = 8) -> dict:
    """RSS of the process by mapping (MiB): [heap] (glibc's main arena), anonymous mappings (pymalloc arenas, other
    malloc arenas, thread stacks), shared libraries; says where memory that Python's tracemalloc does not see lives."""
    sizes: collections.Counter = collections.Counter()
    name = "?"
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            parts = line.split()
            if parts and "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                name = parts[5] if len(parts) >= 6 else "[anon]"
                name = Path(name).name if name.startswith("/") else name
            elif parts and parts[0] == "Rss:":
                sizes[name] += int(parts[1]) / 1024
    except OSError:
        return {}
    return {k: round(v, 1) for k, v in sizes.most_common(top)}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def ts(value: str | None) -> float | None:
    return _audit.timestamp(value) if value else None


# ------------------------------------------------------------------------------------------------ phase
def manifest(name: str, namespace: str) -> dict:
    return {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"source": "hf://org/tiny-bert", "secretRef": {"name": "hf-token"}},
                     "task": "sequence-classification", "dataset": {"source": "hf://glue?config=mrpc"},
                     "strategy": {"type": "partial", "layers": "last:2"},
                     "resources": {"gpus": 0, "cpu": "100m", "memory": "128Mi"},
                     "output": {"location": f"pvc://ckpt/{name}"}, "runPolicy": {"backoffLimit": 3}}}


def prepare_namespace(plane: Plane, work: Path, tag: str) -> dict:
    from operator_process import release_manifests  # tests/cluster: the chart's RBAC, as the tests render it

    suffix = uuid.uuid4().hex[:6]
    ns, system_ns, release = f"scale-{tag}-{suffix}", f"scale-sys-{suffix}", f"scale-{suffix}"
    for n in (system_ns, ns):
        plane.kubectl("create", "namespace", n)
    for _ in range(60):
        if plane.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0:
            break
        time.sleep(0.5)

    class CP:  # what release_manifests needs of the tests' ControlPlane
        bin_dir = plane.bin

    rbac = release_manifests(CP, release, system_ns, ns)
    plane.kubectl("apply", "-f", "-", input=rbac)
    pv = f"scale-ckpt-{suffix}"
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "hostPath": {"path": f"/tmp/{pv}"}, "claimRef": {"namespace": ns, "name": "ckpt"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpt", "namespace": ns},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Gi"}}}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token", "namespace": ns},
         "stringData": {"HF_TOKEN": "not-a-real-token"}},
    ]))
    sa = f"{release}-finetune-operator"
    token = plane.kubectl("create", "token", sa, "-n", system_ns, "--duration=3h").stdout.strip()
    admin = yaml.safe_load(plane.kubeconfig.read_text())
    kc = work / f"operator-{tag}.kubeconfig"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "bench", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": sa, "namespace": ns}}],
        "current-context": "bench"}))
    kc.chmod(0o600)
    server = admin["clusters"][0]["cluster"]["server"]
    return {"ns": ns, "system_ns": system_ns, "rbac": rbac, "pv": pv, "kubeconfig": kc,
            "api_hostport": server.split("://", 1)[1].rstrip("/")}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_operator(ctx: dict, work: Path, tag: str, poll_interval: float, tracemalloc_frames: int = 0,
                   extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path, Path, int]:
    import urllib.request

    counts, log = work / f"counts-{tag}.json", work / f"operator-{tag}.log"
    health, metrics_port = free_port(), free_port()
    env = dict(os.environ, FTO_COUNTS_FILE=str(counts), FTO_API_HOSTPORT=ctx["api_hostport"],
               FTO_SIGHTINGS_FILE=str(work / f"sightings-{tag}.txt"),
               FTO_TRACEMALLOC=str(tracemalloc_frames), **(extra_env or {}))
    cmd = [sys.executable, str(HERE / "_operator_counted.py"), "--kubeconfig", str(ctx["kubeconfig"]),
           "--namespace", ctx["ns"], "--trainer-image", IMAGE, "--poll-interval", str(poll_interval),
           "--metrics-port", str(metrics_port), "--health-port", str(health), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"operator did not start: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    time.sleep(2)  # Kopf's initial listing of the (empty) namespace
    return proc, counts, log, metrics_port


def stop_operator(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cleanup(plane: Plane, ctx: dict) -> float:
    started = time.monotonic()
    for ns in (ctx["ns"], ctx["system_ns"]):
        plane.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)
    plane.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=ctx["rbac"], check=False)
    plane.kubectl("delete", "pv", ctx["pv"], "--ignore-not-found", "--wait=false", check=False)
    plane.kubectl("wait", "--for=delete", f"namespace/{ctx['ns']}", "--timeout=600s", check=False, timeout=660)
    return time.monotonic() - started


def experiment_env(pairs: list[str]) -> dict[str, str]:
    """--experiment-env KEY=VALUE (repeatable) as a dict, e.g. FINETUNE_WORKERS=32 or MALLOC_ARENA_MAX=2."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--experiment-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def phase(plane: Plane, n: int, work: Path, args, minimal: bool = False) -> dict:
    """One phase: N FineTuneJobs against the operator, or (``minimal``) against the bench's minimal controller,
    which only makes Jobs: its phase ends when every Job exists."""
    tag = f"{n}-minimal" if minimal else str(n)
    ctx = prepare_namespace(plane, work, tag)
    ns = ctx["ns"]
    api = plane.api()
    ftj_phase_seen: dict[str, dict[str, float]] = collections.defaultdict(dict)
    lock = threading.Lock()

    def on_ftj(now, kind, obj):
        phase_ = (obj.get("status") or {}).get("phase")
        if phase_:
            with lock:
                ftj_phase_seen[obj["metadata"]["name"]].setdefault(phase_, now)

    job_watch = JobWatch(plane.kubeconfig, f"/apis/batch/v1/namespaces/{ns}/jobs", work / f"jobs-seen-{tag}.txt")
    job_watch.start()
    ftj_watch = Watcher(plane.api(4), f"/apis/finetune.io/v1alpha1/namespaces/{ns}/finetunejobs", on_ftj)
    ftj_watch.start()
    ftj_watch.ready.wait(30)
    extra_env = {"FTO_MINIMAL_CONTROLLER": "1"} if minimal else experiment_env(args.experiment_env)
    proc, counts_file, log, metrics_port = start_operator(ctx, work, tag, args.poll_interval, args.tracemalloc,
                                                          extra_env)
    profiler = None
    if args.profile:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        profiler = subprocess.Popen([py_spy, "record", "-p", str(proc.pid), "-o", str(work / f"profile-{tag}.txt"),
                                     "-f", "raw", "-r", "100", "--nonblocking",
                                     *(["--duration", str(args.profile_seconds)] if args.profile_seconds else []),
                                     *(["--gil"] if args.profile_gil else [])],
                                    stdout=subprocess.DEVNULL, stderr=(work / f"py-spy-{tag}.log").open("w"))
    before_server = apiserver_requests(plane)
    before_plane = plane_cpu(plane)
    before_proc = proc_status(proc.pid)
    before_counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    names = [f"ftj-{i:05d}" for i in range(n)]
    sent: dict[str, float] = {}
    cpu_samples: list[tuple[float, float]] = []  # (time, the controller's CPU seconds so far)
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set():
            s = proc_status(proc.pid)
            if "cpu_s" in s:
                cpu_samples.append((time.time(), s["cpu_s"]))
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    path = f"/apis/finetune.io/v1alpha1/namespaces/{ns}/finetunejobs"

    def create(name: str) -> None:
        sent[name] = time.time()
        for attempt in range(5):
            try:
                request(api, "POST", path, manifest(name, ns))
                return
            except Exception:  # noqa: BLE001 - 429/5xx under load: retry
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))

    t_apply = time.time()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(create, names))
    t_applied = time.time()
    if args.tracemalloc:  # the snapshot while the backlog is largest
        time.sleep(20)
        proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + args.timeout
    jobs_done_at = None
    while time.monotonic() < deadline:
        with lock:
            done = sum(1 for x in names if "Succeeded" in ftj_phase_seen.get(x, {}))
            failed = sum(1 for x in names if "Failed" in ftj_phase_seen.get(x, {}))
        jobs = len(job_watch.seen())
        if jobs >= n and jobs_done_at is None:
            jobs_done_at = time.time()
        if done + failed >= n or (minimal and jobs >= n):
            break
        time.sleep(0.5)
    t_end = time.time()
    time.sleep(1)
    after_proc = proc_status(proc.pid)
    smaps = smaps_summary(proc.pid)
    after_server = apiserver_requests(plane)
    after_plane = plane_cpu(plane)
    passes = {} if minimal else operator_passes(metrics_port)
    time.sleep(1.2)
    after_counts = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    stop_sampling.set()
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(60)
        except subprocess.TimeoutExpired:
            profiler.kill()
    stop_operator(proc)
    ftj_watch.stopped.set()
    job_watch.stop()
    job_seen = job_watch.seen()

    # server-side timestamps (1 s resolution)
    ftjs = request(api, "GET", path, timeout=(5, 300))["items"]
    jobs_list = request(api, "GET", f"/apis/batch/v1/namespaces/{ns}/jobs", timeout=(5, 300))["items"]
    created = {o["metadata"]["name"]: ts(o["metadata"]["creationTimestamp"]) for o in ftjs}
    job_created, job_owner = {}, {}
    for j in jobs_list:
        owner = j["metadata"].get("labels", {}).get("finetune.io/job")
        if owner:
            job_owner[j["metadata"]["name"]] = owner
            job_created[owner] = min(job_created.get(owner, 1e20), ts(j["metadata"]["creationTimestamp"]))
    succeeded_at = {}
    for o in ftjs:
        for c in (o.get("status") or {}).get("conditions", []):
            if c.get("type") == "Succeeded" and c.get("status") == "True":
                succeeded_at[o["metadata"]["name"]] = ts(c.get("lastTransitionTime"))
    phases = collections.Counter((o.get("status") or {}).get("phase", "none") for o in ftjs)

    to_job_client = [job_seen[x] - sent[x] for x in names if x in job_seen]
    to_ok_client = [ftj_phase_seen[x]["Succeeded"] - sent[x] for x in names if "Succeeded" in ftj_phase_seen[x]]
    to_job_server = [job_created[x] - created[x] for x in names if x in job_created and x in created]
    to_ok_server = [succeeded_at[x] - created[x] for x in names if x in succeeded_at and x in created]
    op_delta = collections.Counter(after_counts)
    op_delta.subtract(before_counts)
    srv_delta = after_server.copy()
    srv_delta.subtract(before_server)
    op_total = sum(v for k, v in op_delta.items() if not k.startswith("SCRAPE"))
    srv_total = sum(srv_delta.values())
    cleanup_s = cleanup(plane, ctx)

    def r(x, nd=2):
        return None if x is None else round(x, nd)

    result = {
        "jobs": n, "controller": "minimal" if minimal else "operator", "experiment_env": extra_env,
        "phases": dict(phases),
        "apply_s": r(t_applied - t_apply),
        "create_rate_per_s": r(n / max(1e-9, t_applied - t_apply), 0),
        "all_jobs_created_s": r((jobs_done_at or t_end) - t_apply), "all_succeeded_s": r(t_end - t_apply),
        "apply_to_job_client_s": {"p50": r(pct(to_job_client, 50)), "p99": r(pct(to_job_client, 99)),
                                  "max": r(max(to_job_client, default=None)), "n": len(to_job_client)},
        "apply_to_job_server_s": {"p50": r(pct(to_job_server, 50)), "p99": r(pct(to_job_server, 99)),
                                  "max": r(max(to_job_server, default=None))},
        "apply_to_succeeded_client_s": {"p50": r(pct(to_ok_client, 50)), "p99": r(pct(to_ok_client, 99)),
                                        "max": r(max(to_ok_client, default=None)), "n": len(to_ok_client)},
        "apply_to_succeeded_server_s": {"p50": r(pct(to_ok_server, 50)), "p99": r(pct(to_ok_server, 99)),
                                        "max": r(max(to_ok_server, default=None))},
        "operator_cpu_s": r(after_proc.get("cpu_s", 0) - before_proc.get("cpu_s", 0)),
        # while the Jobs were being made: from the first POST to when the bench saw the last Job (0.1 s samples)
        "operator_cpu_to_last_job_s": r(max((c for t, c in cpu_samples if t <= (jobs_done_at or t_end)), default=0)
                                        - before_proc.get("cpu_s", 0)),
        "operator_peak_rss_mib": r(after_proc.get("VmHWM"), 1),
        "operator_rss_end_mib": r(after_proc.get("VmRSS"), 1),
        "operator_rss_start_mib": r(before_proc.get("VmRSS"), 1),
        "operator_rss_by_mapping_mib": smaps,
        "operator_requests_per_job": r(op_total / n),
        "operator_requests_by_kind_per_job": {k: r(v / n) for k, v in sorted(op_delta.items(), key=lambda kv: -kv[1])
                                              if v},
        "apiserver_requests_per_job_all_clients": r(srv_total / n),
        "apiserver_requests_per_s": r(srv_total / max(1e-9, t_end - t_apply), 0),
        "plane_cpu_s": {k: r(after_plane.get(k, 0) - v, 1) for k, v in before_plane.items()},
        "operator_passes_per_job": r(sum(v for k, v in passes.items()
                                         if k.startswith("finetune_operator_reconcile_total")) / n),
        "operator_pass_mean_s": r(passes.get("finetune_operator_reconcile_duration_seconds_sum", 0)
                                  / max(1.0, passes.get("finetune_operator_reconcile_duration_seconds_count", 0)), 3),
        "apiserver_top_per_job": {k: r(v / n) for k, v in srv_delta.most_common(12) if v},
        "cleanup_s": r(cleanup_s, 1),
        "operator_log_tail": log.read_text()[-1500:],
    }
    if args.audit_log:
        result["audit_legs"] = _audit.legs(args.audit_log, ns, sent, job_seen, job_owner, pct,
                                           _audit.sightings(work / f"sightings-{tag}.txt"))
    if args.profile:
        result["profile"] = str(work / f"profile-{tag}.txt")
    if args.tracemalloc:
        result["memory"] = str(counts_file) + ".mem.txt"
    return result


def vs_minimal(ours: dict, floor: dict) -> dict:
    """Our apply -> Job latencies as multiples of the minimal controller's in the same run, and its own figures."""
    def ratio(q: str) -> float | None:
        a, b = ours["apply_to_job_client_s"][q], floor["apply_to_job_client_s"][q]
        return round(a / b, 2) if a is not None and b else None
    return {"p50_ratio": ratio("p50"), "p99_ratio": ratio("p99"),
            "minimal_apply_to_job_client_s": floor["apply_to_job_client_s"],
            "minimal_requests_per_job": floor["operator_requests_per_job"],
            "minimal_requests_by_kind_per_job": floor["operator_requests_by_kind_per_job"],
            "minimal_peak_rss_mib": floor["operator_peak_rss_mib"], "minimal_cpu_s": floor["operator_cpu_s"],
            "minimal_all_jobs_created_s": floor["all_jobs_created_s"], "audit_legs": floor.get("audit_legs")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--counts", default="500,2000")
    p.add_argument("--state", type=Path, default=None)
    p.add_argument("--shared", action="store_true", help="use the default plane (tools/k8s/cluster.sh's)")
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--poll-interval", type=float, default=15)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--profile", action="store_true", help="record the operator with py-spy (pip install py-spy)")
    p.add_argument("--profile-seconds", type=int, default=0, metavar="S",
                   help="record only the first S seconds of the phase (the creation burst), not all of it")
    p.add_argument("--profile-gil", action="store_true",
                   help="sample only the thread that holds the GIL: where the operator's Python time goes")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                   help="diagnostic: the operator's top allocations at exit (slows it down; not for timings)")
    p.add_argument("--experiment-env", action="append", default=[], metavar="KEY=VALUE",
                   help="what-if: extra environment for the operator process, e.g. MALLOC_ARENA_MAX=2 (repeatable)")
    p.add_argument("--audit", action="store_true",
                   help="diagnostic: an audit log of the creates on the bench's own plane, to split apply -> Job")
    p.add_argument("--keep-plane", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fto-scale-"))
    if args.shared:
        state = Path(os.environ.get("FTO_K8S_STATE") or Path.home() / ".local/state/finetune-operator/plane")
        plane = Plane(state, int(os.environ.get("FTO_K8S_NODES", 2)), own=False)
    else:
        plane = Plane(args.state or work / "plane", args.nodes, own=not args.keep_plane)
    args.audit_log = None
    if args.audit:
        if args.shared:
            raise SystemExit("--audit needs the bench's own plane (its API server starts with the audit flags)")
        plane.env["FTO_K8S_APISERVER_FLAGS"], args.audit_log = _audit.apiserver_flags(work)
    info = machine()
    print(json.dumps({"machine": info, "plane": str(plane.state), "nodes": plane.nodes, "work": str(work)}),
          flush=True)
    plane.up()
    results = []
    try:
        plane.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fto-bench", "-f", str(CRD))
        for attempt in range(10):  # kubectl wait fails outright while the new CRD has no status.conditions yet
            if plane.kubectl("wait", "--for=condition=Established", "crd/finetunejobs.finetune.io", "--timeout=60s",
                             check=attempt == 9).returncode == 0:
                break
            time.sleep(1)
        for n in [int(x) for x in args.counts.split(",")]:
            # The floor first, then the operator, each in a fresh namespace of the same plane.
            floor = phase(plane, n, work, args, minimal=True)
            print(json.dumps(floor), flush=True)
            res = phase(plane, n, work, args)
            res["vs_minimal"] = vs_minimal(res, floor)
            results.append(res)
            print(json.dumps(res), flush=True)
    finally:
        plane.down()
    rows = [{"jobs": x["jobs"], "create s": x["apply_s"],
             "job p50 s": x["apply_to_job_client_s"]["p50"], "job p99 s": x["apply_to_job_client_s"]["p99"],
             "job p99 (ts) s": x["apply_to_job_server_s"]["p99"],
             "ok p50 s": x["apply_to_succeeded_client_s"]["p50"], "ok p99 s": x["apply_to_succeeded_client_s"]["p99"],
             "ok p99 (ts) s": x["apply_to_succeeded_server_s"]["p99"], "all ok s": x["all_succeeded_s"],
             "op CPU s": x["operator_cpu_s"], "op peak RSS MiB": x["operator_peak_rss_mib"],
             "op req/job": x["operator_requests_per_job"], "apiserver req/job": x["apiserver_requests_per_job_all_clients"],
             "minimal job p50 / p99 s": "{} / {}".format(x["vs_minimal"]["minimal_apply_to_job_client_s"]["p50"],
                                                         x["vs_minimal"]["minimal_apply_to_job_client_s"]["p99"]),
             "job p50 / p99 vs minimal": f"{x['vs_minimal']['p50_ratio']}x / {x['vs_minimal']['p99_ratio']}x"}
            for x in results]
    print(f"\n{info['date']}  {info['cpus']} CPUs ({info['cpu']}), load {' '.join(f'{x:.2f}' for x in info['loadavg'])} "
          f"at start, {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end; "
          f"{plane.nodes} KWOK nodes; operator poll interval {args.poll_interval}s")
    print(table(rows, list(rows[0]) if rows else []))
    for x in results:
        print(f"\n{x['jobs']} jobs, operator requests per job: " +
              ", ".join(f"{k} {v}" for k, v in x["operator_requests_by_kind_per_job"].items()))
        print(f"{x['jobs']} jobs, API server (all clients) per job, top: " +
              ", ".join(f"{k} {v}" for k, v in x["apiserver_top_per_job"].items()))
        for who, legs in (("minimal", x["vs_minimal"].get("audit_legs")), ("operator", x.get("audit_legs"))):
            if legs and legs.get("n"):
                print(f"{x['jobs']} jobs, {who}, apply -> Job legs (audit log) p50/p99/max s: " +
                      ", ".join(f"{k} {legs[k]['p50']}/{legs[k]['p99']}/{legs[k]['max']}"
                                for k in _audit.LEGS if k in legs) +
                      f"; last Job stored {legs['last_job_stored_s']} s, seen {legs['last_job_seen_s']} s; "
                      f"writes received before it: {legs['writes_before_last_job']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    if not args.keep_plane:
        if not (args.profile or args.tracemalloc):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
