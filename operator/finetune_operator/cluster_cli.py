"""`finetune get | describe | logs | wait | delete`: follow FineTuneJobs in a cluster without kubectl or knowing how
attempts name their pods.

Subcommands of `finetune` rather than a kubectl plugin: `pip install finetune-operator` already puts `finetune` on
the PATH, it talks to the API through kube.py with the same kubeconfig rules as kubectl (--kubeconfig, $KUBECONFIG,
the context's namespace), and it reads attempts, ranks and progress with the operator's own names.py and api.py.
A plugin would add an install step (krew) and a second copy of that knowledge.

`finetune wait` exits with a code a script can branch on (docs/cli.md):
  0 the job reached what was awaited; 1 it ended otherwise (e.g. Failed while Succeeded was awaited, or it was
  deleted);
  2 usage error, no such FineTuneJob, or the API refused the request (e.g. 403); 75 the API server could not be
  reached; 124 timed out (as timeout(1)).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from typing import Any

from finetune_operator import jobview
from finetune_operator.api import KIND, Phase
from finetune_operator.kube import Kube, KubeError, NotConfigured, NotFound, Unavailable, default_namespace
from finetune_operator.names import CONTAINER
from finetune_trainer.config import EXIT_PERMANENT, EXIT_RETRYABLE, EXIT_SUCCESS

EXIT_OTHER_OUTCOME = 1
EXIT_TIMEOUT = 124
PHASES = [p.value for p in Phase]
# Between two looks at a followed job: for a retry's new pods, or a container that has not started (its log
# request answers 400 until it does).
WAIT_INTERVAL = 1.0


class UserError(Exception):
    """A refusal for the person at the terminal: one line, exit code 2."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Session:
    """One command's view of the cluster: the client and the namespace meant."""

    def __init__(self, args: argparse.Namespace):
        self.kube = Kube.connect(args.kubeconfig)
        self.namespace = args.namespace or default_namespace(args.kubeconfig)

    def finetunejob(self, name: str) -> dict[str, Any]:
        ftj = self.kube.get_finetunejob(self.namespace, name)
        if ftj is None:
            raise UserError(f"FineTuneJob {name} not found in namespace {self.namespace}")
        return ftj

    def pods(self, name: str) -> list[dict[str, Any]]:
        return self.kube.list_children(self.namespace, name)[1]


# ---------------------------------------------------------------------------------------------- commands

def cmd_get(args: argparse.Namespace) -> int:
    session = Session(args)
    if args.name:
        ftjs = [session.finetunejob(args.name)]
    else:
        try:
            ftjs = session.kube.list_finetunejobs(None if args.all_namespaces else session.namespace)
        except NotFound:
            raise UserError("this cluster has no FineTuneJob API: install the chart or crds/") from None
        if not ftjs:
            print(f"No FineTuneJobs in {'any namespace' if args.all_namespaces else session.namespace}.",
                  file=sys.stderr)
            return EXIT_SUCCESS
    sys.stdout.write(jobview.table(ftjs, _now(), with_namespace=args.all_namespaces))
    return EXIT_SUCCESS


def cmd_describe(args: argparse.Namespace) -> int:
    session = Session(args)
    ftj = session.finetunejob(args.name)
    events = session.kube.list_events(session.namespace, KIND, args.name)
    sys.stdout.write(jobview.describe(ftj, session.pods(args.name), events, _now()))
    return EXIT_SUCCESS


def _print_log(session: Session, source: jobview.LogSource, follow: bool) -> bool:
    """Copy one pod's log to stdout: False when, following, its container has not started yet (ask again later)."""
    out = sys.stdout.buffer
    try:
        for chunk in session.kube.pod_log(session.namespace, source.pod, CONTAINER, follow=follow):
            out.write(chunk)
            out.flush()
    except NotFound:
        out.write(b"(the pod is gone; its log with it)\n")
    except KubeError as error:
        if follow and error.status == 400 and "waiting to start" in str(error):
            return False  # ContainerCreating: its log begins once it starts
        out.write(f"(no log: {error})\n".encode())
    out.flush()
    return True


def cmd_logs(args: argparse.Namespace) -> int:
    """Every attempt's pods in order; with -f, the last attempt's pods are followed until the job ends, and an
    attempt started meanwhile (a retry) is followed too."""
    session = Session(args)
    headed: set[jobview.LogSource] = set()
    done: set[jobview.LogSource] = set()
    while True:
        status = session.finetunejob(args.name).get("status") or {}
        sources = jobview.log_sources(status.get("attempts") or 0, session.pods(args.name))
        if args.attempt:
            sources = [s for s in sources if s.attempt == args.attempt]
        for source in sources:
            key = source.key()
            if key in done:
                continue
            follow = args.follow and source.attempt == sources[-1].attempt
            if follow and source.phase == "Pending" and status.get("phase") not in jobview.TERMINAL_PHASES:
                continue  # its container has not started: headed and followed once it has
            if key not in headed:
                print(source.header(args.name), flush=True)
                headed.add(key)
            if follow and source.pod is None and status.get("phase") not in jobview.TERMINAL_PHASES:
                continue  # a new attempt whose pods the Job controller has yet to create
            if source.pod and not _print_log(session, source, follow):
                continue  # not started: the next round asks again, or stops once the job has ended
            done.add(key)
        if not args.follow or status.get("phase") in jobview.TERMINAL_PHASES:
            return EXIT_SUCCESS
        time.sleep(WAIT_INTERVAL)


def _awaited(condition: str) -> tuple[str, str | None]:
    """--for: "complete" (Succeeded or Failed), "phase=<Phase>" or "delete"."""
    kind, _, value = condition.partition("=")
    if kind == "phase" and value in PHASES:
        return kind, value
    if kind in ("complete", "delete") and not value:
        return kind, None
    raise UserError(f"--for={condition}: expected complete, delete or phase=<{'|'.join(PHASES)}>")


def wait_outcome(kind: str, wanted: str | None, ftj: dict[str, Any] | None) -> int | None:
    """The exit code once the wait is decided, None while it is not."""
    if kind == "delete":
        return EXIT_SUCCESS if ftj is None else None
    if ftj is None:
        return EXIT_OTHER_OUTCOME  # deleted before it got there
    phase = (ftj.get("status") or {}).get("phase")
    if kind == "complete":
        return None if phase not in jobview.TERMINAL_PHASES else (
            EXIT_SUCCESS if phase == Phase.SUCCEEDED.value else EXIT_OTHER_OUTCOME)
    if phase == wanted:
        return EXIT_SUCCESS
    # A job that ended never changes phase again: what is awaited cannot happen.
    return EXIT_OTHER_OUTCOME if phase in jobview.TERMINAL_PHASES else None


def _wait(session: Session, name: str, condition: str, timeout: float, interval: float) -> int:
    kind, wanted = _awaited(condition)
    deadline = time.monotonic() + timeout
    ftj = session.kube.get_finetunejob(session.namespace, name)
    if ftj is None and kind != "delete":
        raise UserError(f"FineTuneJob {name} not found in namespace {session.namespace}")
    while True:
        outcome = wait_outcome(kind, wanted, ftj)
        if outcome is not None:
            print(f"{name}: deleted" if ftj is None else f"{name}: {_said(ftj)}")
            return outcome
        if time.monotonic() >= deadline:
            now = _said(ftj) if ftj else "still there"
            print(f"error: timed out after {timeout:g}s waiting for {condition}; {name}: {now}", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(min(interval, max(deadline - time.monotonic(), 0.05)))
        ftj = session.kube.get_finetunejob(session.namespace, name)


def _said(ftj: dict[str, Any]) -> str:
    status = ftj.get("status") or {}
    reason, message = jobview.summary(status)
    return " ".join(part for part in (status.get("phase") or "no phase yet", f"({reason})" if reason else "",
                                      message) if part)


def cmd_wait(args: argparse.Namespace) -> int:
    _awaited(args.wait_for)  # a bad --for is refused before connecting
    return _wait(Session(args), args.name, args.wait_for, args.timeout, args.interval)


def cmd_delete(args: argparse.Namespace) -> int:
    session = Session(args)
    if session.kube.get_finetunejob(session.namespace, args.name) is None:
        if args.ignore_not_found:
            return EXIT_SUCCESS
        raise UserError(f"FineTuneJob {args.name} not found in namespace {session.namespace}")
    # Background propagation: the garbage collector deletes every attempt's Job, pods and Service.
    session.kube.delete_finetunejob(session.namespace, args.name)
    print(f"finetunejob {args.name} deleted")
    return _wait(session, args.name, "delete", args.timeout, 0.5) if args.wait else EXIT_SUCCESS


# ---------------------------------------------------------------------------------------------- entry

COMMANDS = {"get": cmd_get, "describe": cmd_describe, "logs": cmd_logs, "wait": cmd_wait, "delete": cmd_delete}


def run(args: argparse.Namespace) -> int:
    """A cluster command (cli.py parses it), its failures as one line and an exit code."""
    try:
        return COMMANDS[args.command](args)
    except (UserError, NotConfigured) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_PERMANENT
    except Unavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_RETRYABLE
    except KubeError as error:  # 403 and the like: the request itself was refused
        print(f"error: the API server refused: {error}", file=sys.stderr)
        return EXIT_PERMANENT
