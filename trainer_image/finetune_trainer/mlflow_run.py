"""The run's MLflow run, written from a background thread so that a slow or dead tracking server never slows or fails
training.

Calls queue operations (params, metrics, inputs, the end) that one thread sends in order through ``MlflowClient``.
An operation that fails is retried after 2, 4, ... 60 s until it succeeds, the run ends, or the queue overflows (then
the newest metrics are dropped and counted); the run is ``degraded`` from the first failure until everything is
sent. ``finish`` waits a bounded time for the backlog. Every attempt of a FineTuneJob logs to one run: its id is kept
in ``<output>/tracking/mlflow-run.json`` and a restarted attempt reopens it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_trainer.output_spec import MlflowSpec

log = logging.getLogger("finetune_trainer")

RUN_FILE = "mlflow-run.json"
MAX_BACKLOG = 10_000  # operations waiting while the server is down (a metric batch each: a few MB at most)
MAX_BACKOFF = 60.0
PARAM_BATCH = 100  # MLflow's limit of params per log_batch
# MLflow's own HTTP retries would hold the thread for minutes per call and hide the outage; this module retries.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

Operation = Callable[[Any, str], None]  # (client, run id)


class MlflowRun:
    def __init__(self, spec: MlflowSpec, job: str, folder: Path, flush_seconds: float = 30.0,
                 first_backoff: float = 2.0):
        self.spec, self.job, self.folder = spec, job, folder
        self.flush_seconds, self.first_backoff = flush_seconds, first_backoff
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.error: str | None = None  # the last failure, while one is outstanding
        self.dropped = 0
        self.skipped: str | None = None  # the last update the server refused
        self._ops: queue.Queue[Operation | None] = queue.Queue(MAX_BACKLOG)
        self._thread = threading.Thread(target=self._work, daemon=True, name="mlflow")
        self._done = threading.Event()

    # ---------------------------------------------------------------- called by the training loop
    def start(self, params: dict[str, str], tags: dict[str, str]) -> None:
        """Queue the run's params and tags and start the thread; ImportError when MLflow's client is missing."""
        if importlib.util.find_spec("mlflow") is None:
            raise ImportError("No module named 'mlflow'")
        for key, value in CLIENT_ENV.items():
            os.environ.setdefault(key, value)
        self._put(lambda client, run: client.set_tag(run, "finetune.attempt_started", str(int(time.time()))))
        items = sorted(params.items())
        for i in range(0, len(items), PARAM_BATCH):
            self._put(_params(dict(items[i:i + PARAM_BATCH])))
        self._put(_tags(tags))
        self._thread.start()

    def log(self, step: int, values: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        self._put(_metrics(step, stamp, values), droppable=True)

    def log_dataset(self, name: str, source: str, context: str) -> None:
        self._put(_dataset(name, source, context))

    def finish(self, status: str, tags: dict[str, str]) -> None:
        """End the run (FINISHED, FAILED or KILLED) and wait up to flush_seconds for the backlog."""
        self._put(_tags(tags))
        self._put(lambda client, run: client.set_terminated(run, status))
        self._put(None)
        if self._thread.is_alive() and not self._done.wait(self.flush_seconds):
            self.error = (f"{self._ops.qsize()} updates not sent within {self.flush_seconds:.0f}s; last error: "
                          f"{self.error or 'still sending'}")

    @property
    def degraded(self) -> str | None:
        """Why some of the run may be missing from MLflow, or None."""
        if self.error is None and not self.dropped and self.skipped is None:
            return None
        parts = [f"MLflow at {self.spec.tracking_uri}: {self.error}" if self.error else f"MLflow at "
                 f"{self.spec.tracking_uri}"]
        if self.skipped:
            parts.append(f"refused an update: {self.skipped}")
        if self.dropped:
            parts.append(f"{self.dropped} metric updates dropped while it was unreachable")
        return "; ".join(parts)

    def _put(self, op: Operation | None, droppable: bool = False) -> None:
        try:
            self._ops.put_nowait(op)
        except queue.Full:
            if droppable:
                self.dropped += 1
            else:  # params, tags and the end matter more than one metric batch: wait a little for room
                try:
                    self._ops.put(op, timeout=1.0)
                except queue.Full:
                    self.dropped += 1

    # ---------------------------------------------------------------- the thread
    def _work(self) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.spec.tracking_uri)
        self._retry(lambda: self._open(client))
        while True:
            op = self._ops.get()
            if op is None:
                self._done.set()
                return
            self._retry(lambda: op(client, self.run_id))

    def _retry(self, call: Callable[[], None]) -> None:
        delay = self.first_backoff
        while True:
            try:
                call()
            except Exception as error:  # noqa: BLE001 - any client or server failure: training goes on
                if _refused(error):  # e.g. a param changed between attempts: sending it again cannot help
                    log.warning("MLflow at %s refused an update, skipped: %s", self.spec.tracking_uri, error)
                    self.skipped = f"{type(error).__name__}: {str(error)[:300]}"
                    return
                if self.error is None:
                    log.warning("MLflow at %s is unreachable, training goes on and logging is retried: %s",
                                self.spec.tracking_uri, error)
                self.error = f"{type(error).__name__}: {str(error)[:300]}"
                time.sleep(delay)
                delay = min(MAX_BACKOFF, delay * 2)
                continue
            if self.error is not None:
                log.info("MLflow at %s is reachable again", self.spec.tracking_uri)
                self.error = None
            return

    def _open(self, client: Any) -> None:
        """Reopen the job's run when an earlier attempt made one on this server, else create it."""
        path = self.folder / RUN_FILE
        saved = json.loads(path.read_text()) if path.is_file() else {}
        if saved.get("trackingUri") == self.spec.tracking_uri:
            client.update_run(saved["runId"], status="RUNNING")
            self.run_id, self.experiment_id = saved["runId"], saved["experimentId"]
            return
        name = self.spec.experiment or self.job
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else _create_experiment(client, name)
        run = client.create_run(experiment_id, run_name=self.job, tags={"finetune.job": self.job})
        self.run_id, self.experiment_id = run.info.run_id, experiment_id
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"runId": self.run_id, "experimentId": experiment_id,
                                   "trackingUri": self.spec.tracking_uri}))
        os.replace(tmp, path)


def _refused(error: Exception) -> bool:
    """A 4xx answer other than 429: the server is up and said no."""
    from mlflow.exceptions import MlflowException

    status = error.get_http_status_code() if isinstance(error, MlflowException) else None
    return status is not None and 400 <= status < 500 and status != 429


def _create_experiment(client: Any, name: str) -> str:
    try:
        return client.create_experiment(name)
    except Exception:  # noqa: BLE001 - made by another job in between: take that one
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


# Operations import MLflow when they run, on the thread: importing it takes seconds that training need not wait.
def _params(params: dict[str, str]) -> Operation:
    def op(client: Any, run: str) -> None:
        from mlflow.entities import Param

        client.log_batch(run, params=[Param(k, v[:6000]) for k, v in params.items()])
    return op


def _tags(tags: dict[str, str]) -> Operation:
    def op(client: Any, run: str) -> None:
        from mlflow.entities import RunTag

        client.log_batch(run, tags=[RunTag(k, v) for k, v in tags.items()])
    return op


def _metrics(step: int, stamp: int, values: dict[str, float]) -> Operation:
    def op(client: Any, run: str) -> None:
        from mlflow.entities import Metric

        client.log_batch(run, metrics=[Metric(k, float(v), stamp, step) for k, v in values.items()])
    return op


def _dataset(name: str, source: str, context: str) -> Operation:
    def op(client: Any, run: str) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        dataset = Dataset(name=name, digest=digest, source_type="finetune", source=json.dumps({"uri": source}))
        client.log_inputs(run, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])
    return op
