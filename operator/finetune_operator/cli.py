"""The `finetune` command: run and plan jobs locally, print the CRD, run the operator, and follow jobs in a cluster
(get, describe, logs, wait, delete: cluster_cli.py).

Every user error ends in one line per problem on stderr, each naming the field, and a non-zero exit code;
tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from finetune_operator.api import Phase
from finetune_trainer.config import EXIT_PERMANENT, EXIT_RETRYABLE, EXIT_SUCCESS


def _fail(message: str, code: int = EXIT_PERMANENT) -> int:
    for line in message.splitlines():  # one line per problem, each a complete error
        print(f"error: {line}", file=sys.stderr)
    return code


def _print_yaml(data: object) -> None:
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False, width=120))


def cmd_crd(_: argparse.Namespace) -> int:
    from finetune_operator.crd import render_crd

    sys.stdout.write(render_crd())
    return EXIT_SUCCESS


def _load(args: argparse.Namespace):
    from finetune_operator.manifest import load_finetunejob
    from finetune_operator.places import OnThisMachine, trainer_config

    ftj = load_finetunejob(args.manifest)
    here = OnThisMachine(Path(args.manifest).resolve().parent, getattr(args, "output", None),
                         getattr(args, "metrics_port", 0))
    config = trainer_config(ftj, here)
    note = here.output_note(ftj)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return ftj, config


def _hourly_cost(ftj, prices_file: str | None) -> dict | None:
    """The cost of an hour of the job's requests, priced with the chart's ``pricing`` table (YAML or JSON)."""
    if not prices_file:
        return None
    from finetune_operator.places import LocalRunError
    from finetune_operator.pricing import hourly_cost, parse_prices

    try:
        prices = parse_prices(json.dumps(yaml.safe_load(Path(prices_file).read_text()) or {}))
    except (OSError, yaml.YAMLError, ValueError) as error:
        raise LocalRunError(f"--prices {prices_file}: {error}") from None
    if prices is None:
        return None
    r = ftj.spec.resources
    per_hour = hourly_cost(prices, r.gpus, r.cpu, r.memory, r.nodes, r.node_selector)
    return {"perHour": per_hour} if per_hour else None


def cmd_plan(args: argparse.Namespace) -> int:
    ftj, config = _load(args)  # refuse a bad manifest before paying for the trainer's imports
    cost = _hourly_cost(ftj, args.prices)
    from finetune_trainer.plan import plan

    _print_yaml({**plan(config), **({"estimatedCost": cost} if cost else {})})
    return EXIT_SUCCESS


def _quiet_libraries() -> None:
    """The progress bar and the final status are the output; the libraries' own bars and load reports are noise."""
    from finetune_trainer.progress import quiet_library_bars

    quiet_library_bars()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # The trainer's own lines (metrics URL, evals, checkpoints) are the useful ones; the bar shows each step.
    logging.basicConfig(level=logging.WARNING, format="finetune: %(message)s")
    logging.getLogger("finetune_trainer").setLevel(logging.INFO)


def cmd_run(args: argparse.Namespace) -> int:
    ftj, config = _load(args)
    _quiet_libraries()
    from finetune_operator.status import status_from_summary
    from finetune_operator.summary import read_summary
    from finetune_trainer import train
    from finetune_trainer.errors import TrainerError
    from finetune_trainer.locations import local_path

    print(f"finetune: running {ftj.metadata.name} ({ftj.spec.task}, strategy {ftj.spec.strategy.type}); "
          f"output {config.output.location}", file=sys.stderr)
    try:
        summary = train.run(config, progress_bar=not args.no_progress)
        code = EXIT_SUCCESS
    except TrainerError as error:
        # The trainer wrote its summary before raising: the same file the operator reads in a cluster.
        summary = json.loads((local_path(config.output.location) / "summary.json").read_text())
        code = error.exit_code
    _print_yaml({"status": status_from_summary(read_summary(summary)).wire()})
    if code == EXIT_RETRYABLE:
        print("finetune: interrupted after saving a checkpoint; run the same command again to resume",
              file=sys.stderr)
    elif code != EXIT_SUCCESS:
        print(f"error: {summary.get('reason')}: {summary.get('message')}", file=sys.stderr)
    return code


def _cluster_commands(commands: argparse._SubParsersAction) -> None:
    """get, describe, logs, wait, delete: parsed here, run by cluster_cli.py (imported only for them, since it
    loads the Kubernetes client)."""
    phases = "|".join(p.value for p in Phase)

    def command(name: str, help_: str, named: bool = True) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=f"{help_} (cluster)")
        if named:
            parser.add_argument("name", help="FineTuneJob name")
        parser.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
        parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
        parser.set_defaults(cluster=True)
        return parser

    get = command("get", "list FineTuneJobs with a progress bar", named=False)
    get.add_argument("name", nargs="?", help="one FineTuneJob (default: all in the namespace)")
    get.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    command("describe", "a FineTuneJob's spec, status, attempts and events")
    logs = command("logs", "the trainer's log of every attempt, in order")
    logs.add_argument("-f", "--follow", action="store_true", help="follow the running attempt until the job ends")
    logs.add_argument("--attempt", type=int, help="only this attempt")
    wait = command("wait", "wait for a phase; the exit code says how it ended (docs/cli.md)")
    wait.add_argument("--for", dest="wait_for", default="complete",
                      help=f"complete (default: Succeeded or Failed), delete, or phase=<{phases}>")
    wait.add_argument("--timeout", type=float, default=3600, help="seconds (default 3600); exit 124 when exceeded")
    wait.add_argument("--interval", type=float, default=2, help=argparse.SUPPRESS)
    delete = command("delete", "delete a FineTuneJob and, through owner references, every attempt")
    delete.add_argument("--wait", action="store_true", help="return once it is gone")
    delete.add_argument("--timeout", type=float, default=300, help="seconds to wait with --wait (default 300)")
    delete.add_argument("--ignore-not-found", action="store_true", help="exit 0 if it does not exist")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune", description="Fine-tune pre-trained language models, locally or on Kubernetes.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="train a FineTuneJob manifest on this machine (no cluster)")
    run.add_argument("manifest", help="FineTuneJob YAML file")
    run.add_argument("--output", help="output folder (default: spec.output.location if local, else ./runs/<name>)")
    run.add_argument("--metrics-port", type=int, default=0,
                     help="Prometheus port on localhost (default: a free port, printed at start)")
    run.add_argument("--no-progress", action="store_true",
                     help="plain progress lines instead of the progress bar (the bar shows only on a terminal)")
    run.set_defaults(handler=cmd_run)

    plan = commands.add_parser("plan", help="resolve a job without training: layers, parameters, memory")
    plan.add_argument("manifest", help="FineTuneJob YAML file")
    plan.add_argument("--prices", help="the chart's pricing value as a YAML/JSON file: adds what an hour of the "
                                       "job's requests costs (docs/usage-cost.md)")
    plan.set_defaults(handler=cmd_plan)

    crd = commands.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition")
    crd.set_defaults(handler=cmd_crd)

    _cluster_commands(commands)
    # `finetune operator ...` is handed whole to the operator's own parser (see main).
    commands.add_parser("operator", help="run the Kopf operator (see `finetune operator --help`)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from finetune_operator.manifest import ManifestError
    from finetune_operator.places import LocalRunError
    from finetune_trainer.errors import TrainerError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["operator"]:
        from finetune_operator import runner

        return runner.main(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "cluster", False):
        from finetune_operator import cluster_cli

        return cluster_cli.run(args)
    try:
        return args.handler(args)
    except (ManifestError, LocalRunError) as error:
        return _fail(str(error))
    except TrainerError as error:  # raised before training starts (plan, pre-flight)
        return _fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_RETRYABLE)


if __name__ == "__main__":
    sys.exit(main())
