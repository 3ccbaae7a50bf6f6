"""`finetune wait`'s decisions and exit codes (cluster_cli.py) without a cluster; tests/cluster/test_cli_on_cluster.py
runs every command against the real API server."""

from __future__ import annotations

import pytest

from finetune_operator.cli import build_parser
from finetune_operator.cluster_cli import EXIT_OTHER_OUTCOME, UserError, _awaited, wait_outcome


def phase(value: str | None) -> dict:
    return {"metadata": {"name": "j"}, "status": {"phase": value} if value else {}}


@pytest.mark.parametrize("condition, job, code", [
    ("complete", phase("Running"), None),
    ("complete", phase("Succeeded"), 0),
    ("complete", phase("Failed"), EXIT_OTHER_OUTCOME),
    ("phase=Running", phase(None), None),
    ("phase=Running", phase("Running"), 0),
    ("phase=Running", phase("Succeeded"), EXIT_OTHER_OUTCOME),  # ended: it never runs again
    ("phase=Succeeded", phase("Failed"), EXIT_OTHER_OUTCOME),
    ("phase=Suspended", phase("Pending"), None),
    ("phase=Succeeded", None, EXIT_OTHER_OUTCOME),  # deleted on the way
    ("delete", phase("Running"), None),
    ("delete", None, 0),
])
def test_wait_outcome(condition, job, code):
    assert wait_outcome(*_awaited(condition), job) == code


@pytest.mark.parametrize("condition", ["phase=Done", "phase", "complete=yes", "condition=Ready"])
def test_a_bad_for_is_refused_naming_what_is_allowed(condition):
    with pytest.raises(UserError, match="expected complete, delete or phase=<Pending|Running"):
        _awaited(condition)


def test_cluster_commands_parse_as_cluster_commands():
    args = build_parser().parse_args(["wait", "j", "-n", "ml", "--for=phase=Running", "--timeout", "5"])
    assert (args.cluster, args.command, args.name, args.namespace, args.wait_for, args.timeout) == \
        (True, "wait", "j", "ml", "phase=Running", 5)
    assert build_parser().parse_args(["get", "-A"]).all_namespaces
    assert not getattr(build_parser().parse_args(["crd"]), "cluster", False)
