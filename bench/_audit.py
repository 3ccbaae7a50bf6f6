"""Where apply -> Job time goes, from the API server's audit log (bench/operator_scale.py --audit).

The objects' creationTimestamps have 1 s resolution, too coarse to say whether a slow run's last Jobs were created
late or seen late. The audit log's timestamps are in microseconds: with the bench's own clock (same machine) they
split each FineTuneJob's apply -> Job into four legs:

- ``post``: the bench sends the FineTuneJob's POST -> the API server has stored it (its response is complete);
- ``react``: the FineTuneJob stored -> the controller's Job POST received: watch delivery to the controller, its
  queue and its work (for the operator: the pass, the Job render, anything it does first); split in two where the
  controller wrote when it first saw each FineTuneJob and when it sent the POST of its Job (``_operator_counted.py``'s
  sightings): ``deliver`` (stored -> seen by the controller's code), ``work`` (seen -> the POST handed to the HTTP
  client: queue and pass) and ``send`` (handed to the client -> received by the API server);
- ``store``: the Job POST received -> stored (admission, etcd);
- ``seen``: the Job stored -> the bench's watch event for it: watch delivery to a watcher that does nothing else.

It also counts the writes the controller sent while Jobs were still being created (status PATCHes and Events,
received before the last Job was stored): what the creations shared the API server with. The policy logs only these
writes, at Metadata level, so the audit log costs the API server little next to the requests it measures.
"""

from __future__ import annotations

import collections
import json
from datetime import datetime
from pathlib import Path

POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create]
  resources:
  - {group: batch, resources: [jobs]}
  - {group: finetune.io, resources: [finetunejobs]}
  - {group: "", resources: [events]}
- level: Metadata
  verbs: [patch]
  resources:
  - {group: finetune.io, resources: [finetunejobs/status]}
- level: None
"""


def apiserver_flags(work: Path) -> tuple[str, Path]:
    """The kube-apiserver flags (for cluster.sh's FTO_K8S_APISERVER_FLAGS) and the log they write."""
    policy, log = work / "audit-policy.yaml", work / "audit.log"
    policy.write_text(POLICY)
    return f"--audit-policy-file={policy} --audit-log-path={log} --audit-log-format=json", log


def timestamp(value: str) -> float:
    """An RFC 3339 time (the API server's, ending in Z) as seconds since the epoch."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def writes(log: Path, namespace: str) -> list[tuple[str, str, float, float]]:
    """(verb resource[/subresource], name, request received, response complete) of each successful write in the
    namespace; an Event's says whether the controller under test wrote it (it runs as the chart's ServiceAccount; the
    control plane's controllers have ServiceAccounts of their own)."""
    out = []
    with open(log) as f:
        for line in f:
            e = json.loads(line)
            ref = e.get("objectRef") or {}
            if (e.get("stage") == "ResponseComplete" and ref.get("namespace") == namespace
                    and (e.get("responseStatus") or {}).get("code", 0) < 300 and ref.get("name")):
                what = f"{e['verb']} {ref['resource']}" + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                if ref["resource"] == "events":  # the operator's, or the control plane's (scheduler, Job controller)
                    # the operator's requests come as the chart's ServiceAccount
                    ours = "finetune-operator" in (e.get("user") or {}).get("username", "")
                    what += " (controller)" if ours else " (plane)"
                out.append((what, ref["name"], timestamp(e["requestReceivedTimestamp"]),
                            timestamp(e["stageTimestamp"])))
    return out


LEGS = ("post", "react", "deliver", "work", "send", "store", "seen", "stored", "total")


def sightings(path: Path) -> dict[tuple[str, str], float]:
    """(FineTuneJob name, "seen" or "post") -> when (the first time)."""
    out: dict[tuple[str, str], float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, at, what = line.split()
            out.setdefault((name, what), float(at))
    return out


def legs(log: Path, namespace: str, sent: dict[str, float], seen: dict[str, float],
         job_owner: dict[str, str], pct, sighted: dict[tuple[str, str], float] | None = None,
         slowest: int = 5) -> dict:
    """p50/p99/max of each leg over the FineTuneJobs (``sent``: bench POST times, ``seen``: bench watch times,
    ``job_owner``: Job name -> FineTuneJob name, ``sighted``: when the controller saw each), and the legs of the
    ``slowest`` apply -> Job ones."""
    written = writes(log, namespace)
    made = {(what.split(" ", 1)[1], name): (received, done) for what, name, received, done in written
            if what.startswith("create ")}
    job_of = {owner: name for name, owner in job_owner.items()}
    per: dict[str, dict[str, float]] = {}
    for ftj, t_sent in sent.items():
        f = made.get(("finetunejobs", ftj))
        j = made.get(("jobs", job_of.get(ftj, "")))
        if f is None or j is None or ftj not in seen:
            continue
        per[ftj] = {"post": f[1] - t_sent, "react": j[0] - f[1], "store": j[1] - j[0], "seen": seen[ftj] - j[1],
                    "stored": j[1] - t_sent, "total": seen[ftj] - t_sent}
        if sighted and (ftj, "seen") in sighted and (ftj, "post") in sighted:
            at, posted = sighted[(ftj, "seen")], sighted[(ftj, "post")]
            per[ftj].update(deliver=at - f[1], work=posted - at, send=j[0] - posted)

    def summary(key: str) -> dict:
        values = [x[key] for x in per.values()]
        return {"p50": round(pct(values, 50), 3), "p99": round(pct(values, 99), 3), "max": round(max(values), 3)}

    if not per:
        return {"n": 0}
    worst = sorted(per, key=lambda k: per[k]["total"], reverse=True)[:slowest]
    last_job = max(made[("jobs", job_of[k])][1] for k in per)
    others = [(what, received) for what, _, received, _ in written if not what.startswith(("create jobs",
                                                                                         "create finetunejobs"))]
    return {"n": len(per), **{k: summary(k) for k in LEGS if all(k in x for x in per.values())},
            "slowest": {k: {leg: round(v, 3) for leg, v in per[k].items()} for k in worst},
            # when the last Job was stored and when the bench saw it, from the first POST
            "last_job_stored_s": round(last_job - min(sent.values()), 3),
            "last_job_seen_s": round(max(seen[k] for k in per) - min(sent.values()), 3),
            "writes_before_last_job": dict(collections.Counter(what for what, t in others if t < last_job))}
