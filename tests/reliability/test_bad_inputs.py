"""Bad input: the corpus in bad_inputs/ (one invalid FineTuneJob per file) is refused at the earliest layer that can
know, with a message naming the field, and none of it crashes or wedges the operator.

Each file starts with a header the tests read::

    # expect: <layer> <field> [<words>...]   layer: schema | plan | trainer
    # category: <what kind of mistake>
    # reason: <Reason>                       plan/trainer: the trainer's reason, which becomes the condition's
    # known-bug: <text>                      optional: a gap known today; the refusal test is xfail(strict)
    # <one line saying what is wrong>

``field`` and every word must appear (case-insensitively) in each refusal message of that case.

Layers
- schema: `kubectl apply` (kubectl's default --validate=strict; server-side OpenAPI schema and CEL rules) refuses
  it, and so does `finetune plan` locally, which validates with the same models.
- plan: only the model can tell (e.g. `last:30` on a 6-block model, a model path that does not exist): the
  apiserver admits it, `finetune plan` refuses it (exit 2, one error line), and in the cluster the trainer's
  pre-flight fails with exit 2 and the job ends Failed with the trainer's reason, not retried.
- trainer: only the data or the pod can tell (`finetune plan` resolves the model without reading the data; files
  on a claim are only visible in the pod; an early-stopping metric shows at the first evaluation): the apiserver
  admits it, the trainer's pre-flight refuses it (locally `finetune run` does, before training when it can), and
  the job ends Failed with the trainer's reason, not retried.

Trainer pods are KWOK's, so the cluster half replays what the real trainer does: the termination message and exit
code come from running the real trainer (its pre-flight) on a tiny model here, on the config the operator renders.
``@TINY@`` in a file is the root of the tiny models and data (conftest.tiny); the tests substitute it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.operator_process import FAKE_EXIT, FAKE_FAIL, FAKE_MESSAGE, Env, operator_env

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
LAYERS = ("schema", "plan", "trainer")
PLACEHOLDER = "@TINY@"
# What issue 7 asks the corpus to cover (each must be a category of at least one file).
REQUIRED_CATEGORIES = (
    "wrong type", "out of range", "unknown enum", "contradictory (CEL)", "missing field", "unknown field",
    "absurd size", "name too long", "layer spec out of range", "wrong column name", "unreadable data",
    "model path does not exist",
)


@dataclass(frozen=True)
class Case:
    path: Path
    layer: str
    field: str
    words: str
    category: str
    what: str
    reason: str | None = None
    known_bug: str | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    def text(self, tiny: Path | None = None) -> str:
        text = self.path.read_text()
        if PLACEHOLDER in text:
            assert tiny is not None, f"{self.name} needs the tiny fixtures"
            text = text.replace(PLACEHOLDER, str(tiny))
        return text

    def document(self, tiny: Path | None = None) -> dict[str, Any]:
        return yaml.safe_load(self.text(tiny))

    def write(self, directory: Path, tiny: Path | None = None) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.path.name
        path.write_text(self.text(tiny))
        return path

    def problems(self, message: str) -> list[str]:
        """What the message fails to say: the field, or one of the words."""
        lowered = message.lower()
        missing = [f"field {self.field!r}"] if self.field.lower() not in lowered else []
        if self.words and self.words.lower() not in lowered:
            missing.append(f"words {self.words!r}")
        return missing


def _parse(path: Path) -> Case:
    header: dict[str, str] = {}
    what = ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        match = re.match(r"#\s*(expect|category|reason|known-bug):\s*(.*)$", line)
        if match:
            header[match.group(1)] = match.group(2).strip()
        else:
            what = line.lstrip("# ").strip()
    assert "expect" in header, f"{path.name}: no '# expect: <layer> <field> <words>' header"
    layer, field, *words = header["expect"].split()
    return Case(path, layer, field, " ".join(words), header.get("category", ""), what, header.get("reason"),
                header.get("known-bug"))


CASES = [_parse(p) for p in sorted(CORPUS.glob("*.yaml"))]
SCHEMA = [c for c in CASES if c.layer == "schema"]
PLAN = [c for c in CASES if c.layer == "plan"]
TRAINER = [c for c in CASES if c.layer == "trainer"]


def _params(cases: list[Case], known_bugs_fail: bool = True) -> list[Any]:
    return [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(reason=c.known_bug, strict=True)]
                         if c.known_bug and known_bugs_fail else []) for c in cases]


# ------------------------------------------------------------------------------------------ the corpus itself

def test_corpus_covers_what_issue_7_asks_for(figures) -> None:
    assert len(CASES) >= 40
    assert {c.layer for c in CASES} == set(LAYERS), [c.name for c in CASES if c.layer not in LAYERS]
    missing = [category for category in REQUIRED_CATEGORIES if category not in {c.category for c in CASES}]
    assert not missing, f"no case of: {missing}"
    for case in CASES:
        document = case.document(Path("/tiny"))
        assert case.what, f"{case.name}: no description line"
        if case.layer != "schema":
            assert case.reason, f"{case.name}: plan/trainer cases name the trainer's reason"
            # Everything but the mistake is valid, so nothing earlier than the trainer may refuse it.
            assert document["metadata"]["name"] == case.name
    names = [c.document(Path("/tiny"))["metadata"].get("name") for c in CASES]
    assert len(names) == len(set(names)), "metadata.name must be unique (the cluster test applies them together)"
    figures.add("bad inputs", "inputs in the corpus", len(CASES))
    figures.add("bad inputs", "by layer", {layer: sum(c.layer == layer for c in CASES) for layer in LAYERS})
    categories: dict[str, int] = {}
    for case in CASES:
        categories[case.category] = categories.get(case.category, 0) + 1
    figures.add("bad inputs", "by category", dict(sorted(categories.items())))
    figures.add("bad inputs", "known gaps (xfail)", [c.name for c in CASES if c.known_bug])


# ------------------------------------------------------------------------------------------ finetune plan

def _finetune_plan(manifest: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`finetune plan MANIFEST` through the CLI's own entry point (the console script calls the same main)."""
    from finetune_operator import cli

    capsys.readouterr()
    code = cli.main(["plan", str(manifest)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm lines (transformers' "Loading weights", datasets' "Map")


def _assert_one_line_refusal(case: Case, code: int, err: str, figures, command: str = "plan") -> str:
    """Exit 2 and one "error:" line naming the field, last on stderr; no traceback. Progress bars that libraries
    draw on the way (model loading) are tolerated and counted, nothing else."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    noise = [line for line in lines if PROGRESS_BAR.search(line)]
    lines = [line for line in lines if line not in noise and not line.startswith(("note:", "finetune: running"))]
    assert code == 2, f"{case.name}: finetune {command} exited {code}, stderr: {err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case.name}: not one error line: {err!r}"
    problems = case.problems(lines[0])
    assert not problems, f"{case.name}: the message misses {problems}: {lines[0]}"
    if noise:
        figures.inc("bad inputs", f"finetune {command} refusals preceded by progress-bar lines on stderr")
    return lines[0]


@pytest.mark.parametrize("case", _params(SCHEMA))
def test_schema_case_is_refused_by_finetune_plan(case: Case, tmp_path: Path, capsys, offline, figures) -> None:
    code, _, err = _finetune_plan(case.write(tmp_path), capsys)
    message = _assert_one_line_refusal(case, code, err, figures)
    figures.inc("bad inputs", "schema cases refused by finetune plan")
    figures.add("messages: finetune plan", case.name, message)


def _plan_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("finetune_trainer.plan") is not None


@pytest.mark.parametrize("case", _params(PLAN))
def test_plan_case_is_refused_by_finetune_plan(case: Case, tiny: Path, tmp_path: Path, capsys, offline,
                                               figures) -> None:
    if not _plan_available():
        pytest.fail("`finetune plan` cannot run: finetune_trainer.plan (imported by finetune_operator/cli.py "
                    "cmd_plan) does not exist", pytrace=False)
    code, _, err = _finetune_plan(case.write(tmp_path, tiny), capsys)
    message = _assert_one_line_refusal(case, code, err, figures)
    figures.inc("bad inputs", "plan cases refused by finetune plan")
    figures.add("messages: finetune plan", case.name, message)


LOCAL_TRAINER = [c for c in TRAINER if "pvc://" not in c.text(Path("/tiny"))]


@pytest.mark.parametrize("case", _params(LOCAL_TRAINER))
def test_trainer_case_on_local_files_is_refused_by_finetune_run(case: Case, tiny: Path, tmp_path: Path, capsys,
                                                                offline, figures) -> None:
    """`finetune run` runs the same pre-flight as the pod: exit 2 and one error line naming the field."""
    from finetune_operator import cli

    manifest = case.write(tmp_path, tiny)
    capsys.readouterr()
    code = cli.main(["run", str(manifest), "--output", str(tmp_path / "out"), "--no-progress", "--metrics-port", "0"])
    err = capsys.readouterr().err
    # The error line comes after the trainer's own log lines (logging to stderr); keep just the CLI's lines.
    cli_lines = "\n".join(line for line in err.splitlines() if line.startswith(("error:", "note:", "Traceback")))
    message = _assert_one_line_refusal(case, code, cli_lines or err, figures, command="run")
    assert message.startswith(f"error: {case.reason}: "), message
    figures.inc("bad inputs", "trainer cases on local files refused by finetune run")
    figures.add("messages: finetune run", case.name, message)


# ------------------------------------------------------------------------------------------ trainer pre-flight

_preflight_lock = threading.Lock()


def _trainer_config_as_rendered(case: Case, tiny: Path, output: Path):
    """The trainer's config exactly as the operator writes it into the attempt's pod annotation, with the pod's
    claim mount root (/mnt/pvc) at <tiny>/pvc; only the output folder and the metrics port differ from a pod."""
    from finetune_operator.manifest import parse_finetunejob
    from finetune_operator.render import build_config
    from finetune_operator.settings import Settings
    from finetune_trainer.config import TrainerConfig

    document = case.document(tiny)
    document["metadata"].update(namespace="ml", uid="uid-" + case.name)
    ftj = parse_finetunejob(document, case.name)
    raw = yaml.safe_load(build_config(ftj, Settings(pvc_mount_root=str(tiny / "pvc"))))
    raw["output"]["location"] = str(output)
    raw["metricsPort"] = 0
    return TrainerConfig.model_validate(raw)


def run_preflight(case: Case, tiny: Path, workdir: Path) -> tuple[int, dict[str, Any], str]:
    """Run the real trainer (finetune_trainer.train.run, what `python -m finetune_trainer` calls) in this process
    on the rendered config: (exit code, the JSON it left in the termination log, that JSON as text)."""
    from finetune_trainer.errors import TrainerError
    from finetune_trainer.train import run

    termination_log = workdir / case.name / "termination-log"
    termination_log.parent.mkdir(parents=True, exist_ok=True)
    termination_log.write_text("")  # the kubelet provides the file; the trainer writes it only if it exists
    config = _trainer_config_as_rendered(case, tiny, workdir / case.name / "output")
    saved = {k: os.environ.get(k) for k in ("FINETUNE_TERMINATION_LOG", "HF_HUB_OFFLINE", "FINETUNE_PVC_ROOT")}
    with _preflight_lock:
        # FINETUNE_PVC_ROOT: where the pod would mount the claims (the rendered pod's env says the same).
        os.environ.update(FINETUNE_TERMINATION_LOG=str(termination_log), HF_HUB_OFFLINE="1",
                          FINETUNE_PVC_ROOT=str(tiny / "pvc"))
        try:
            run(config)
            code = 0
        except TrainerError as error:
            code = error.exit_code
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    text = termination_log.read_text()
    return code, json.loads(text) if text else {}, text


@pytest.fixture(scope="session")
def preflight(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, dict, str]]:
    """Every plan and trainer case through the real trainer's pre-flight, once per session."""
    workdir = tmp_path_factory.mktemp("preflight")
    started = time.monotonic()
    results = {case.name: run_preflight(case, tiny, workdir) for case in PLAN + TRAINER}
    results["__seconds__"] = (0, {"seconds": round(time.monotonic() - started, 1)}, "")
    return results


@pytest.mark.parametrize("case", _params(PLAN + TRAINER))
def test_trainer_preflight_refuses_permanently_naming_the_field(case: Case, preflight, figures) -> None:
    from finetune_trainer.config import EXIT_PERMANENT

    code, summary, text = preflight[case.name]
    assert code == EXIT_PERMANENT, f"{case.name}: exit {code}, summary {summary}"
    assert summary["phase"] == "Failed" and summary["exitCode"] == EXIT_PERMANENT
    assert summary["reason"] == case.reason, summary
    assert summary["field"] == case.field, summary
    assert not case.problems(summary["message"]), f"{case.name}: {case.problems(summary['message'])}: {summary}"
    assert len(text.encode()) <= 4096  # what Kubernetes keeps of a termination message
    figures.inc("bad inputs", "refused by the trainer pre-flight (exit 2)")
    figures.add("messages: trainer pre-flight", case.name, f"{summary['reason']}: {summary['message']}")


def test_the_real_trainer_process_exits_2_with_the_same_summary(tiny: Path, tmp_path: Path, preflight) -> None:
    """One case through `python -m finetune_trainer --config` as the pod runs it: same exit code, same summary."""
    case = next(c for c in PLAN if c.name == "layers-last-30-of-6")
    config = _trainer_config_as_rendered(case, tiny, tmp_path / "output")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config.wire()))
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")
    env = {**os.environ, "FINETUNE_TERMINATION_LOG": str(termination_log), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "finetune_trainer", "--config", str(config_file)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(termination_log.read_text())
    expected = preflight[case.name][1]
    assert {k: summary[k] for k in ("phase", "reason", "field", "exitCode")} == \
           {k: expected[k] for k in ("phase", "reason", "field", "exitCode")}
    assert summary["message"] == expected["message"]


# ------------------------------------------------------------------------------------------ trainer output

MALFORMED_SUMMARIES = {
    # label: termination message
    "not JSON (a log tail)": "Traceback (most recent call last): ...",
    "a JSON list": "[1, 2]",
    "parameters of a pre-flight failure (null counts)": json.dumps(
        {"phase": "Failed", "reason": "InvalidData", "message": "m", "field": "dataset.source", "exitCode": 2,
         "progress": {"step": 0, "totalSteps": 0, "epoch": 0.0}, "metrics": {},
         "parameters": {"trainable": None, "total": None}, "checkpoint": None}),
    "parameters as a string": json.dumps({"phase": "Failed", "reason": "R", "parameters": "lots"}),
    "NaN metric": '{"phase": "Failed", "reason": "R", "metrics": {"trainLoss": NaN}}',
    "reason as a number": json.dumps({"phase": "Failed", "reason": 5, "message": "m"}),
    "message as an object": json.dumps({"phase": "Failed", "reason": "R", "message": {"a": 1}}),
    "progress as a string": json.dumps({"phase": "Failed", "reason": "R", "progress": "half"}),
    "negative checkpoint step": json.dumps(
        {"phase": "Failed", "reason": "R", "checkpoint": {"location": "x", "step": -1}}),
    "a 5000-character reason": json.dumps({"phase": "Failed", "reason": "R" * 5000}),
}


@pytest.mark.parametrize("label,exit_code", [
    pytest.param(label, code, id=f"{label.replace(' ', '-')}-exit-{code}")
    for label in MALFORMED_SUMMARIES for code in (2, 75)])
def test_a_malformed_termination_message_still_ends_the_attempt(label: str, exit_code: int, figures) -> None:
    """What a trainer leaves in its termination message is input too: whatever it is, the failed attempt must
    lead to a decision (Failed, or a retry) and a status the CRD accepts, never an exception."""
    from datetime import datetime, timezone

    from finetune_operator.api import FineTuneJobStatus
    from finetune_operator.lifecycle import decide
    from finetune_operator.observed import observe
    from finetune_operator.status import next_status
    from finetune_operator.summary import REASON_PATTERN

    message = MALFORMED_SUMMARIES[label]
    ftj = {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob",
           "metadata": {"name": "j", "namespace": "ml", "uid": "u", "generation": 1},
           "spec": {"model": {"source": "m"}, "task": "causal-lm", "dataset": {"source": "d"},
                    "strategy": {"type": "lora"}},
           "status": {"phase": "Running", "attempts": 1, "startTime": "2025-01-01T00:00:00Z"}}
    job = {"metadata": {"name": "j-a1", "labels": {"finetune.io/attempt": "1"}}, "spec": {"parallelism": 1},
           "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}
    pod = {"metadata": {"name": "j-a1-x", "labels": {"finetune.io/attempt": "1"}},
           "status": {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
               "exitCode": exit_code, "reason": "Error", "message": message}}}]}}
    observed = observe(ftj, [job], [pod], datetime.now(timezone.utc))
    decision = decide(observed)
    status = next_status(observed, decision)
    FineTuneJobStatus.model_validate(status)  # what the CRD's status schema would accept
    assert all(REASON_PATTERN.match(c["reason"]) and len(c["reason"]) <= 1024 for c in status["conditions"])
    json.dumps(status, allow_nan=False)  # NaN is not JSON: the API server would refuse the patch
    assert decision.phase.value == ("Failed" if exit_code == 2 else "Pending")
    figures.inc("bad inputs", "malformed termination messages handled")


# ------------------------------------------------------------------------------------------ the cluster

@dataclass
class ClusterRun:
    env: Env
    applied: dict[str, subprocess.CompletedProcess]  # every case: kubectl apply's result
    finished: dict[str, dict]  # plan/trainer cases: the FineTuneJob once Failed (or as last seen)
    good_job: dict
    seconds: dict[str, float]


def _kubectl_apply(env: Env, path: Path, *flags: str) -> subprocess.CompletedProcess:
    return env.cp.kubectl("apply", "-n", env.ns, *flags, "-f", str(path), check=False)


def _fail_like_the_trainer(case: Case, preflight) -> dict[str, Any]:
    code, _, text = preflight[case.name]
    return {"labels": {FAKE_FAIL: "true"}, "annotations": {FAKE_EXIT: str(code), FAKE_MESSAGE: text}}


@pytest.fixture(scope="module")
def cluster_run(control_plane, module_tmp: Path, tiny: Path, preflight) -> ClusterRun:
    with operator_env(control_plane, module_tmp / "operator", prefix="rel-bad") as env:
        seconds: dict[str, float] = {}
        started = time.monotonic()
        files = {c.name: c.write(module_tmp / "schema", tiny) for c in SCHEMA}
        # Every case that only the trainer can refuse, as the user wrote it plus the KWOK hook that makes its pod
        # fail the way the real trainer's pre-flight did.
        for case in PLAN + TRAINER:
            document = case.document(tiny)
            document["spec"]["podMetadata"] = _fail_like_the_trainer(case, preflight)
            path = module_tmp / "admitted" / f"{case.name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(document))
            files[case.name] = path
        with ThreadPoolExecutor(4) as pool:
            applied = dict(zip(files, pool.map(lambda p: _kubectl_apply(env, p), files.values())))
        seconds["apply every case"] = round(time.monotonic() - started, 1)

        def all_failed() -> bool:
            phases = {c.name: env.ftj(c.name).get("status", {}).get("phase") for c in PLAN + TRAINER
                      if applied[c.name].returncode == 0}
            return all(p == "Failed" for p in phases.values())
        try:
            env.cp.wait_for(all_failed, timeout=120, interval=1, what="every plan/trainer case Failed")
        except AssertionError:
            pass  # the per-case tests report which ones did not get there
        seconds["until every plan/trainer case is Failed"] = round(time.monotonic() - started, 1)
        time.sleep(3)  # a retry, if the operator made one, would show as a second Job by now
        finished = {c.name: env.ftj(c.name) for c in PLAN + TRAINER if applied[c.name].returncode == 0}
        for name in finished:
            finished[name]["jobs"] = [j["metadata"]["name"] for j in env.jobs(name)]

        # The operator has seen the whole corpus: it must still be alive and still run a good job to the end.
        env.apply_job("good-after-the-corpus")
        good = env.wait_phase("good-after-the-corpus", "Succeeded", timeout=90)
        seconds["total"] = round(time.monotonic() - started, 1)
        yield ClusterRun(env, applied, finished, good, seconds)


@pytest.mark.cluster
@pytest.mark.parametrize("case", _params(SCHEMA))
def test_schema_case_is_refused_by_the_apiserver(case: Case, cluster_run: ClusterRun, figures) -> None:
    result = cluster_run.applied[case.name]
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, f"{case.name}: kubectl apply admitted it: {output}"
    problems = case.problems(output)
    assert not problems, f"{case.name}: the apiserver's message misses {problems}: {output}"
    assert cluster_run.env.cp.kubectl("get", "finetunejob", case.document().get("metadata", {}).get("name", "-"),
                                      "-n", cluster_run.env.ns, check=False).returncode != 0
    kind = "CEL" if case.category.startswith("contradictory") else (
        "kubectl (no such kind)" if case.category == "not a FineTuneJob" else "OpenAPI schema")
    figures.inc("bad inputs: refused by kubectl apply", kind)
    figures.add("messages: kubectl apply", case.name, " | ".join(
        line.strip() for line in output.splitlines() if "some validation rules were not checked" not in line))


@pytest.mark.cluster
@pytest.mark.parametrize("case", _params(PLAN + TRAINER))
def test_case_only_the_trainer_knows_ends_failed_and_is_not_retried(case: Case, cluster_run: ClusterRun,
                                                                    preflight, figures) -> None:
    result = cluster_run.applied[case.name]
    assert result.returncode == 0, f"{case.name}: the apiserver cannot know, yet refused it: {result.stderr}"
    ftj = cluster_run.finished[case.name]
    status = ftj.get("status", {})
    assert status.get("phase") == "Failed", f"{case.name}: {json.dumps(status)}"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == case.reason == preflight[case.name][1]["reason"]
    assert failed["message"].startswith(f"spec.{case.field}"), failed["message"]
    assert not case.problems(failed["message"]), f"{case.name}: {case.problems(failed['message'])}: {failed}"
    assert status["attempts"] == 1 and ftj["jobs"] == [f"{case.name}-a1"], (status, ftj["jobs"])
    figures.inc("bad inputs", f"{case.layer} cases Failed in the cluster, not retried")
    figures.add("messages: FineTuneJob condition", case.name, f"{failed['reason']}: {failed['message']}")


@pytest.mark.cluster
def test_the_operator_survives_the_corpus(cluster_run: ClusterRun, figures) -> None:
    env = cluster_run.env
    assert env.operator.alive and env.operator.healthy(), env.operator.log.read_text()[-3000:]
    assert cluster_run.good_job["status"]["attempts"] == 1
    log = env.operator.log.read_text()
    assert "Traceback" not in log, log[-4000:]
    admitted = sorted(name for name, r in cluster_run.applied.items() if r.returncode == 0)
    figures.add("bad inputs", "admitted by the apiserver", len(admitted))
    figures.add("bad inputs", "operator alive after the corpus, good job Succeeded", True)
    figures.add("bad inputs", "seconds", cluster_run.seconds)


@pytest.mark.cluster
def test_a_job_whose_trainer_job_the_apiserver_refuses_ends_failed(cluster_run: ClusterRun, figures) -> None:
    """What the schema cannot see (here a node-selector key that is not a label key) the apiserver refuses when
    the operator creates the trainer Job: the job ends Failed (InvalidSpec) with the apiserver's words, once."""
    env = cluster_run.env
    env.apply_job("refused-child", resources={"gpus": 1, "nodeSelector": {"not a label key!": "x"}})
    status = env.wait_phase("refused-child", "Failed", timeout=60)["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    figures.add("bad inputs", "trainer Job refused by the apiserver: condition", failed["message"])
    assert failed["reason"] == "InvalidSpec" and "nodeSelector" in failed["message"]
    assert env.jobs("refused-child") == []


@pytest.mark.cluster
def test_unknown_fields_are_refused_unless_validation_is_turned_off(cluster_run: ClusterRun, tmp_path: Path,
                                                                    figures) -> None:
    """kubectl's default (--validate=strict) refuses an unknown field (test above); --validate=warn admits the
    object with a warning, and --validate=false admits it silently: the apiserver prunes the field."""
    env = cluster_run.env
    document = next(c for c in SCHEMA if c.name == "unknown-field-typo").document()
    for mode in ("warn", "false"):
        document["metadata"]["name"] = f"pruned-{mode}"
        path = tmp_path / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(document))
        result = _kubectl_apply(env, path, f"--validate={mode}")
        assert result.returncode == 0, result.stderr
        stored = env.ftj(f"pruned-{mode}")["spec"]["training"]
        assert "epochz" not in stored and stored["epochs"] == 1
        if mode == "warn":
            assert 'unknown field "spec.training.epochz"' in result.stderr
        else:
            assert "epochz" not in result.stderr
        figures.add("bad inputs: unknown field", f"kubectl apply --validate={mode}",
                    (result.stderr.strip() or "(nothing)") + "; admitted, field pruned")
        env.cp.kubectl("delete", "finetunejob", f"pruned-{mode}", "-n", env.ns, "--wait=false")


@pytest.mark.cluster
def test_model_task_and_strategy_cannot_change_under_a_running_job(cluster_run: ClusterRun, figures) -> None:
    env = cluster_run.env
    env.apply_job("immutable", pod_metadata={"labels": {"finetune.io/fake-run": "forever"}})
    changed = env.job_manifest("immutable", pod_metadata={"labels": {"finetune.io/fake-run": "forever"}},
                               strategy={"type": "lora"})
    result = env.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(changed), check=False)
    assert result.returncode != 0 and "spec.strategy is immutable" in result.stderr, result.stderr
    figures.add("bad inputs", "changing spec.strategy of an existing job", result.stderr.strip().splitlines()[-1])
