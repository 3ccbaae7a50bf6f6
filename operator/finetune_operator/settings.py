"""Operator settings: what a cluster admin chooses once for every FineTuneJob the operator runs.

Each setting has a default, can be set from the environment (``FINETUNE_<NAME>``, which is how the Helm chart's
Deployment passes values) and from a command-line flag of ``finetune operator`` (see runner.py), in that order of
precedence: flag over environment over default.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from finetune_operator.names import DEFAULT_PVC_ROOT

ENV_PREFIX = "FINETUNE_"
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    trainer_image: str = f"ghcr.io/finetune-operator/trainer:{version('finetune-operator')}"
    image_pull_policy: str = "IfNotPresent"
    gpu_resource: str = "nvidia.com/gpu"  # for jobs that do not name spec.resources.gpuResource
    metrics_port: int = 8080  # the operator's own Prometheus endpoint
    health_port: int = 8081  # the operator's probes: /healthz (liveness), /readyz (leads; health.py)
    poll_interval: float = 15.0  # seconds between progress polls of a running job (bounds the scrape rate)
    # Reconcile passes at once: threads for Kopf's FineTuneJob handlers (its executor), and as many for the passes
    # children's events queue (workqueue.py); the API client keeps a connection for each. A pass mostly waits on the
    # API server, so more threads than CPUs pay off; Kopf's default is min(32, CPUs + 4).
    workers: int = 16
    scrape_timeout: float = 2.0  # seconds for one read of a trainer's metrics endpoint
    trainer_metrics_port: int = 9090
    rendezvous_port: int = 29500  # torchrun's store on rank 0 of a multi-node job
    pvc_mount_root: str = DEFAULT_PVC_ROOT  # pvc://claim/path is mounted at <root>/<claim>
    # SIGTERM to SIGKILL: the trainer saves a checkpoint in this time, so it must cover one checkpoint write.
    termination_grace_seconds: int = 300
    run_as_user: int = 1000  # the trainer image's non-root user
    # Defaults for the S3 server of jobs' s3:// locations (a job's spec.storage.s3 wins; "": the AWS default).
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_addressing_style: str = ""  # path | virtual | auto
    # A claim shared by every trainer pod for downloads (s3:// sources, the Hugging Face cache); "": per-pod scratch.
    cache_claim: str = ""
    # A Running job whose step has not moved this long gets the Stalled condition; the chart's PrometheusRule alert
    # FineTuneJobStalled reads the same value (operator.stalledAfterSeconds). 0 turns the condition off.
    stalled_after_seconds: float = 900.0
    prices: str = ""  # the price table as JSON (pricing.py; chart value pricing), for status.usage.estimatedCost
    # Notifications (docs/notifications.md): the admin's sinks as a JSON list of {url, format}; the file holding the
    # HMAC key (mounted from a Secret); whether spec.notify is honoured; per-sink queue, tries and timeouts.
    notify_sinks: str = ""
    notify_signing_key_file: str = ""
    notify_job_sinks: bool = True
    notify_queue_size: int = 1000
    notify_max_tries: int = 8
    notify_first_backoff: float = 1.0
    notify_timeout: float = 5.0
    # Leader election on a Lease (leader.py; the chart turns it on): only the holder reconciles, others stand by.
    # "" namespace: the pod's (else the kubeconfig context's); "" identity: <hostname>_<pid> (the chart: pod name).
    leader_election: bool = False
    leader_election_namespace: str = ""
    leader_election_name: str = "finetune-operator"
    leader_election_identity: str = ""
    lease_duration_seconds: int = 10  # whole seconds, as the Lease stores it
    lease_renew_deadline_seconds: float = 7.0
    lease_retry_period_seconds: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Defaults, overlaid with FINETUNE_* variables, overlaid with ``overrides`` that are not None."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw != "":
                try:
                    values[field.name] = _parse(field.type, raw)
                except ValueError as error:
                    raise ValueError(f"{ENV_PREFIX}{field.name.upper()}: {error}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "namespaces" in values:
            values["namespaces"] = tuple(values["namespaces"])
        return cls(**values)


def _parse(kind: Any, raw: str) -> Any:
    # Annotations are strings here (from __future__ import annotations).
    if kind == "tuple[str, ...]":
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind == "bool":
        if raw.strip().lower() not in _BOOLEANS:
            raise ValueError(f"{raw!r} is not a boolean (true or false)")
        return _BOOLEANS[raw.strip().lower()]
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw
