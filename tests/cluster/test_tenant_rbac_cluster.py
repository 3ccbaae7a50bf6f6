"""People, not the operator: with the chart's aggregated ClusterRoles, a user bound to the built-in `edit`, `view`
or `admin` role in a namespace may do with FineTuneJobs there what that role allows for built-in kinds, and
nothing elsewhere. Asked of the real API server as the user (`kubectl auth can-i --as`, `kubectl --as`), after the
controller manager has aggregated the rules into the built-in roles.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
import yaml

from helm_chart import CHART, helm
from operator_process import install_crd

if TYPE_CHECKING:
    from conftest import ControlPlane

pytestmark = pytest.mark.cluster

RESOURCE = "finetunejobs.finetune.io"
READ, WRITE = ("get", "list", "watch"), ("create", "update", "patch", "delete", "deletecollection")
JOB = {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "mine"},
       "spec": {"model": {"source": "hf://org/tiny"}, "task": "sequence-classification",
                "dataset": {"source": "hf://glue?config=mrpc"}, "strategy": {"type": "full"},
                "runPolicy": {"suspend": True}}}


def _can(cp: ControlPlane, user: str, verb: str, namespace: str, *subresource: str) -> bool:
    answer = cp.kubectl("auth", "can-i", verb, RESOURCE, *(f"--subresource={s}" for s in subresource),
                        "-n", namespace, f"--as={user}", check=False)
    assert answer.stdout.strip() in ("yes", "no"), answer.stderr
    return answer.stdout.strip() == "yes"


def test_built_in_roles_grant_finetunejobs_through_aggregation(control_plane: ControlPlane) -> None:
    cp = control_plane
    install_crd(cp)
    suffix = uuid.uuid4().hex[:6]
    # Only the aggregated roles, under a release name of this test's own: ClusterRoles are cluster-wide and other
    # sessions share the plane.
    roles = helm("template", f"rbac-{suffix}", str(CHART), "--show-only", "templates/rbac-aggregated.yaml").stdout
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(roles) if doc]
    assert len(names) == 2
    users = {role: f"{role}-{suffix}@example.com" for role in ("view", "edit", "admin")}
    team, other = cp.create_namespace(f"rbac-team-{suffix}"), cp.create_namespace(f"rbac-other-{suffix}")
    try:
        cp.apply(roles)
        for role, user in users.items():
            cp.kubectl("create", "rolebinding", f"{role}-{suffix}", f"--clusterrole={role}", f"--user={user}",
                       "-n", team)
        # The controller manager copies the labelled roles' rules into view, edit and admin within moments.
        cp.wait_for(lambda: _can(cp, users["view"], "watch", team) and _can(cp, users["edit"], "deletecollection",
                                                                            team), timeout=30, what="aggregation")
        for verb in READ:
            assert all(_can(cp, user, verb, team) for user in users.values()), verb
        for verb in WRITE:
            assert _can(cp, users["edit"], verb, team) and _can(cp, users["admin"], verb, team), verb
            assert not _can(cp, users["view"], verb, team), verb
        # Status is the operator's: nobody but it writes there; and nothing is granted in another namespace.
        assert not _can(cp, users["edit"], "patch", team, "status")
        assert _can(cp, users["view"], "get", team, "status")
        assert not any(_can(cp, user, "get", other) for user in users.values())

        # As the user, for real: edit creates and deletes a FineTuneJob; view reads it and may not delete it.
        cp.kubectl("--as", users["edit"], "apply", "-n", team, "-f", "-", input=yaml.safe_dump(JOB))
        listed = cp.kubectl("--as", users["view"], "get", "finetunejobs", "-n", team, "-o", "name").stdout
        assert listed.strip() == "finetunejob.finetune.io/mine"
        refused = cp.kubectl("--as", users["view"], "delete", "finetunejob", "mine", "-n", team, check=False)
        assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()
        cp.kubectl("--as", users["edit"], "delete", "finetunejob", "mine", "-n", team)
    finally:
        cp.delete_namespace(team)
        cp.delete_namespace(other)
        cp.kubectl("delete", "clusterrole", *names, "--ignore-not-found", check=False)
