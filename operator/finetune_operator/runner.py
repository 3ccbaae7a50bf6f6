"""`finetune operator`: run the Kopf operator until SIGTERM/SIGINT.

Kopf runs standalone (no Kopf peering). With --leader-election (the chart's default) replicas share one Lease
(leader.py): a standby waits for it, only the holder runs Kopf and with it every handler, the poller and the work
queue, a holder that cannot renew exits at once (the Deployment restarts it), and one stopped by SIGTERM releases
the Lease after Kopf stopped. Without it, one replica per set of namespaces, as the process is started.
Serves Prometheus metrics on --metrics-port and the probes on --health-port (/healthz, /readyz: health.py).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time

import kopf

from finetune_operator import handlers, health, logs, metrics
from finetune_operator.children import Children, scopes
from finetune_operator.kube import Kube, default_namespace
from finetune_operator.leader import Elector, Timing
from finetune_operator.notify.sinks import SinkConfigError
from finetune_operator.poller import CONCURRENCY, Poller
from finetune_operator.pricing import parse_prices
from finetune_operator.reconciler import Reconciler
from finetune_operator.reflector import Reflectors
from finetune_operator.scrape import Scraper
from finetune_operator.settings import Settings
from finetune_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)
# Longest wait before restarting the watches after Kopf stopped them; short enough for liveness probes.
MAX_RESTART_DELAY = 30.0
# After a burst of new FineTuneJobs, status writes and Events wait until no creating pass has run for this long:
# written the moment the burst's last Job was created, they delayed its delivery to other watchers by up to 1.7 s
# (BENCHMARKS.md §5).
REPORTS_SETTLE_SECONDS = 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune operator",
        description="Run the FineTuneJob operator. Flags override FINETUNE_* environment variables "
                    "(e.g. FINETUNE_NAMESPACES=a,b, FINETUNE_TRAINER_IMAGE).")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", dest="namespaces", metavar="NAMESPACE",
                       help="watch this namespace (repeatable; default: all namespaces)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: the pod's ServiceAccount, else $KUBECONFIG "
                                             "or ~/.kube/config)")
    parser.add_argument("--trainer-image", help="default trainer image (a job's spec.image overrides it)")
    parser.add_argument("--gpu-resource", help="extended resource name of GPUs (default nvidia.com/gpu)")
    parser.add_argument("--metrics-port", type=int, help="operator metrics port (default 8080)")
    parser.add_argument("--health-port", type=int,
                        help="probes port: /healthz (liveness), /readyz (200 on the leader) (default 8081)")
    parser.add_argument("--leader-election", action="store_const", const=True,
                        help="stand by until this process holds the Lease FINETUNE_LEADER_ELECTION_NAME in "
                             "FINETUNE_LEADER_ELECTION_NAMESPACE; only the holder reconciles (default: off)")
    parser.add_argument("--poll-interval", type=float,
                        help="seconds between progress polls of a running job (default 15)")
    parser.add_argument("--workers", type=int,
                        help="reconcile passes at once: threads for the passes FineTuneJob events queue, and as many "
                             "for those Job and pod events queue (default 16)")
    parser.add_argument("--log-level", default=os.environ.get("FINETUNE_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        os.environ,
        namespaces=() if args.all_namespaces else args.namespaces,
        trainer_image=args.trainer_image,
        gpu_resource=args.gpu_resource,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        poll_interval=args.poll_interval,
        workers=args.workers,
        leader_election=args.leader_election,
    )


def elector_from(settings: Settings, kube: Kube, kubeconfig: str | None) -> Elector | None:
    """The Lease candidate the settings ask for (None: no leader election)."""
    if not settings.leader_election:
        return None
    try:
        timing = Timing(settings.lease_duration_seconds, settings.lease_renew_deadline_seconds,
                        settings.lease_retry_period_seconds)
    except ValueError as error:
        raise ValueError("FINETUNE_LEASE_DURATION_SECONDS, FINETUNE_LEASE_RENEW_DEADLINE_SECONDS, "
                         f"FINETUNE_LEASE_RETRY_PERIOD_SECONDS: {error}") from None
    return Elector(kube, settings.leader_election_namespace or default_namespace(kubeconfig),
                   settings.leader_election_name,
                   settings.leader_election_identity or f"{socket.gethostname()}_{os.getpid()}", timing)


def stand_by(elector: Elector) -> bool:
    """Wait for the Lease; False if SIGTERM or SIGINT came first."""
    stopping = threading.Event()
    handlers_before = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        led = elector.campaign(stopping)
    finally:
        for sig, handler in handlers_before.items():
            signal.signal(sig, handler)
    if led and stopping.is_set():  # the signal came with the Lease
        elector.release()
        return False
    return led


def lease_lost(why: str) -> None:
    """Crash-only: exit now, without Kopf's graceful stop (whose passes would still write), and let the Deployment
    restart the container as a standby. The renew deadline leaves the Lease's last seconds for this."""
    log.critical("leader election: %s; exiting so that two leaders never act at once", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        settings = settings_from(args)
    except ValueError as error:  # a FINETUNE_* variable that does not parse; the message names it
        build_parser().error(str(error))
    if settings.workers < 1:
        build_parser().error("--workers (FINETUNE_WORKERS) must be at least 1")
    try:
        parse_prices(settings.prices)
    except ValueError as error:
        build_parser().error(str(error))
    # A connection for every thread that may call the API at once: the two work queues' threads (settings.workers
    # each), the poller's, and one per watch of the children (reflector.py).
    kube = Kube.connect(args.kubeconfig,
                        pool_size=2 * settings.workers + CONCURRENCY + len(scopes(settings.namespaces)))
    try:
        elector = elector_from(settings, kube, args.kubeconfig)
    except ValueError as error:  # lease timings out of order
        build_parser().error(str(error))
    scraper = Scraper(settings.trainer_metrics_port, settings.scrape_timeout, min_interval=settings.poll_interval)
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    metrics.serve(settings.metrics_port)
    probes = health.Probes(health.loopback_endpoint(), lambda: elector.holder if elector else "")
    probes.leading = elector is None  # without leader election, liveness is Kopf's from the start
    health.serve(settings.health_port, probes)
    children = Children(settings.namespaces)
    try:
        reconciler = Reconciler(kube, settings, scraper, children)
    except (SinkConfigError, OSError) as error:  # the admin's sinks or the signing key's file
        build_parser().error(f"notifications: {error}")
    memo = kopf.Memo(reconciler=reconciler, children=children, poller=Poller(reconciler, settings.poll_interval))
    # Two queues on threads of their own: new and edited FineTuneJobs' passes (which create Jobs) do not wait
    # behind the backlog of pod and Job events, whose passes (and new jobs' first status writes) yield to them,
    # and after a burst start once no creation has run for REPORTS_SETTLE_SECONDS (workqueue.py says why).
    memo.new_passes = WorkQueue(functools.partial(handlers.event_pass, memo), settings.workers, name="finetune-new")
    memo.passes = WorkQueue(functools.partial(handlers.event_pass, memo), settings.workers,
                            yields_to=memo.new_passes, settle=REPORTS_SETTLE_SECONDS)
    reconciler.write_later = memo.passes.add
    memo.watches = Reflectors(kube, settings.namespaces, children, memo.passes.add)
    scope = f"namespaces {', '.join(settings.namespaces)}" if settings.namespaces else "all namespaces"
    log.info("watching FineTuneJobs in %s; trainer image %s; metrics on :%d",
             scope, settings.trainer_image, settings.metrics_port)
    if elector is not None:
        if not stand_by(elector):
            return 0
        elector.keep_leading(lease_lost)
    probes.leading = True
    metrics.LEADER.set(1)
    try:
        return run_kopf(registry, settings, memo, probes)
    finally:
        if elector is not None:
            for queue in (memo.new_passes, memo.passes):  # the passes still running end before a standby may lead
                queue.stop(timeout=None)
            elector.release()  # nothing of this process writes any more


def run_kopf(registry: kopf.OperatorRegistry, settings: Settings, memo: kopf.Memo, probes: health.Probes) -> int:
    """Kopf until SIGTERM/SIGINT, its watches started again whenever they stop."""
    delay = 1.0
    while True:
        started = time.monotonic()
        probes.kopf_ready = threading.Event()
        try:
            kopf.run(
                registry=registry,
                standalone=True,
                clusterwide=not settings.namespaces,
                namespaces=settings.namespaces,
                liveness_endpoint=probes.kopf_endpoint,
                ready_flag=probes.kopf_ready,
                memo=memo,
            )
            return 0  # stopped by SIGTERM/SIGINT
        except Exception as error:  # noqa: BLE001 - Kopf gives up on a watch that 404s (CRD deleted), etc.
            # Start the watches again in-process, rather than exit into a crash loop: a missing CRD is then
            # waited for (Kopf watches CRDs), and an API server that comes back is picked up.
            delay = 1.0 if time.monotonic() - started > MAX_RESTART_DELAY else min(2 * delay, MAX_RESTART_DELAY)
            log.error("watches stopped (%s: %s); starting them again in %.0fs", type(error).__name__, error, delay)
            log.debug("watches stopped", exc_info=True)
            time.sleep(delay)


if __name__ == "__main__":
    sys.exit(main())
