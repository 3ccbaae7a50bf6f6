"""output.push against a real registry (tests/registry_live.py: go-containerregistry's, and a token-auth front
for it): tiny models trained, pushed, and read back through the distribution API (and with crane, a client that
is not ours): media types, annotations, layer digests, the model digest; then the failures: bad credentials and
a missing Secret fail before training, an unreachable registry is retryable and the retry pushes without training.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import pytest
from finetune_trainer import oci, push, train
from finetune_trainer.config import EXIT_PERMANENT, EXIT_RETRYABLE
from finetune_trainer.errors import RegistryAuthFailed, RegistryUnavailable
from finetune_trainer.output_spec import JOB_UID_ENV, REGISTRY_AUTH_ENV
from ports import free_port
from registry_live import AuthProxy, Registry, crane_binary

UID = "0a1b2c3d-0000-4000-8000-00000000beef"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = Registry(crane_binary(), tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture
def pushing(job, tiny_model_dir, monkeypatch):
    """``pushing(reference, strategy=..., secret=..., insecure=True)`` → a tiny job's config with output.push."""
    monkeypatch.setenv(JOB_UID_ENV, UID)

    def make(reference: str, strategy: dict | None = None, secret: str | None = None, **kw):
        config = job(tiny_model_dir("bert"), strategy=strategy, **kw)
        spec = {"reference": reference, "insecure": True, **({"secretRef": {"name": secret}} if secret else {})}
        output = config.output.model_copy(update={"push": push.PushSpec.model_validate(spec)})
        return config.model_copy(update={"output": output})

    return make


def _docker_config(tmp_path, host: str, user: str, password: str):
    path = tmp_path / "dockerconfig.json"
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


def _sha256sum_digest(model_dir) -> str:
    """The model digest as docs/export.md tells users to recompute it, with coreutils."""
    listing = subprocess.run("find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum", shell=True,
                             cwd=model_dir, capture_output=True, text=True, check=True).stdout
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


@pytest.mark.parametrize("strategy,artifact_type", [
    ({"type": "lora", "lora": {"r": 4, "alpha": 8}}, "application/vnd.finetune.adapter.v1"),
    ({"type": "partial", "layers": "last:1"}, "application/vnd.finetune.model.v1"),
])
def test_the_model_is_pushed_with_its_lineage_and_reads_back_intact(registry, pushing, tmp_path, strategy,
                                                                    artifact_type):
    config = pushing(f"{registry.host}/team/tiny-{strategy['type']}:v1", strategy=strategy)
    summary = train.run(config)

    model_dir = tmp_path / "out" / "model"
    [model, artifact] = summary["outputs"]
    assert model == {"kind": "model", "uri": str(model_dir), "digest": _sha256sum_digest(model_dir)}
    manifest, digest = registry.manifest(f"team/tiny-{strategy['type']}", "v1")
    assert artifact == {"kind": "oci", "uri": f"oci://{registry.host}/team/tiny-{strategy['type']}:v1@{digest}",
                        "digest": digest}

    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["artifactType"] == artifact_type
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert registry.blob(f"team/tiny-{strategy['type']}", manifest["config"]["digest"]) == b"{}"
    files = {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    layers = {layer["annotations"]["org.opencontainers.image.title"]: layer for layer in manifest["layers"]}
    assert set(layers) == set(files)
    for name, layer in layers.items():
        blob = registry.blob(f"team/tiny-{strategy['type']}", layer["digest"])
        assert blob == files[name] and layer["size"] == len(blob)
        assert layer["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
        weights = name.endswith(".safetensors")
        assert layer["mediaType"] == f"application/vnd.finetune.model.{'weights' if weights else 'file'}.v1"

    notes = manifest["annotations"]
    assert notes["io.finetune.base.source"] == config.model.source
    assert notes["io.finetune.base.revision"] == "main"
    assert notes["io.finetune.strategy"] == strategy["type"]
    assert json.loads(notes["io.finetune.strategy.spec"])["type"] == strategy["type"]
    assert notes["io.finetune.task"] == "sequence-classification"
    assert notes["io.finetune.job.uid"] == UID and notes["io.finetune.job.name"] == "tiny"
    assert notes["io.finetune.model.digest"] == model["digest"]
    assert notes["io.finetune.dataset.fingerprint"] == push.dataset_fingerprint(config.dataset)
    metrics = json.loads(notes["io.finetune.metrics"])
    assert metrics["evalLoss"] == summary["metrics"]["evalLoss"] and "evalAccuracy" in metrics
    assert notes["org.opencontainers.image.created"] and notes["org.opencontainers.image.title"] == "tiny"
    assert notes["org.opencontainers.image.source"] == config.model.source

    # An independent client agrees on the digest.
    crane = subprocess.run([str(crane_binary()), "digest", "--insecure",
                            f"{registry.host}/team/tiny-{strategy['type']}:v1"],
                           capture_output=True, text=True, check=True)
    assert crane.stdout.strip() == digest


def test_dataset_fingerprint_follows_the_files(sentiment_dir, tmp_path):
    from finetune_trainer.config import DatasetSpec

    copy = tmp_path / "data"
    copy.mkdir()
    for f in sentiment_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    before = push.dataset_fingerprint(DatasetSpec(source=str(copy)))
    assert push.dataset_fingerprint(DatasetSpec(source=str(copy))) == before
    with (copy / "train.csv").open("a") as f:
        f.write("one more row,1\n")
    assert push.dataset_fingerprint(DatasetSpec(source=str(copy))) != before
    assert push.dataset_fingerprint(DatasetSpec(source="hf://glue?config=mrpc")).startswith("sha256:")


def test_token_auth_with_the_secrets_credentials_and_a_repush_sends_no_blob(registry, pushing, tmp_path,
                                                                            monkeypatch):
    proxy = AuthProxy(registry, "ci", "s3cret")
    try:
        monkeypatch.setenv(REGISTRY_AUTH_ENV, str(_docker_config(tmp_path, proxy.host, "ci", "s3cret")))
        config = pushing(f"{proxy.host}/team/authed:v1", secret="registry-push")
        summary = train.run(config)
        assert summary["phase"] == "Succeeded", summary
        tokens = [auth for method, path, auth in proxy.seen if path.startswith("/token")]
        assert tokens and all(auth == proxy.basic for auth in tokens)
        assert any(method == "PUT" and "/manifests/v1" in path for method, path, _ in proxy.seen)

        # The same model under another tag: every blob is there already, only the manifest is sent.
        proxy.seen.clear()
        again = config.model_copy(update={"output": config.output.model_copy(update={
            "push": config.output.push.model_copy(update={"reference": f"{proxy.host}/team/authed:v2"})})})
        summary2 = train.run(again)
        assert summary2["outputs"][1]["digest"] == summary["outputs"][1]["digest"]
        assert not [p for m, p, _ in proxy.seen if m in ("POST", "PATCH") or (m == "PUT" and "/blobs/" in p)]
        logged = json.dumps(summary) + json.dumps(summary2)
        assert "s3cret" not in logged and base64.b64encode(b"ci:s3cret").decode() not in logged
    finally:
        proxy.stop()


def test_wrong_credentials_fail_permanently_before_training_naming_the_secret(registry, pushing, tmp_path,
                                                                              monkeypatch):
    proxy = AuthProxy(registry, "ci", "s3cret")
    try:
        monkeypatch.setenv(REGISTRY_AUTH_ENV, str(_docker_config(tmp_path, proxy.host, "ci", "wrong")))
        with pytest.raises(RegistryAuthFailed) as failed:
            train.run(pushing(f"{proxy.host}/team/authed:v1", secret="registry-push"))
    finally:
        proxy.stop()
    assert failed.value.exit_code == EXIT_PERMANENT and failed.value.field == "output.push.secretRef"
    assert "Secret 'registry-push'" in str(failed.value) and proxy.host in str(failed.value)
    assert "wrong" not in str(failed.value)
    assert not (tmp_path / "out" / "checkpoints").exists()  # refused before the first step


def test_a_missing_secret_or_one_without_the_registry_fails_naming_it(pushing, tmp_path, monkeypatch):
    monkeypatch.setenv(REGISTRY_AUTH_ENV, str(tmp_path / "absent" / ".dockerconfigjson"))
    with pytest.raises(RegistryAuthFailed, match=r"Secret 'registry-push' \(key .dockerconfigjson\) is missing"):
        train.run(pushing("registry.invalid:5000/team/x:v1", secret="registry-push"))
    monkeypatch.setenv(REGISTRY_AUTH_ENV, str(_docker_config(tmp_path, "other.example.com", "u", "p")))
    with pytest.raises(RegistryAuthFailed, match=r"no credentials for registry registry.invalid:5000 "
                                                 r"\(it has: other.example.com\)"):
        train.run(pushing("registry.invalid:5000/team/x:v1", secret="registry-push"))


def test_an_unreachable_registry_is_retryable_and_the_retry_pushes_without_training(registry, pushing, tmp_path,
                                                                                    monkeypatch):
    dead = f"127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    with pytest.raises(RegistryUnavailable) as failed:
        train.run(pushing(f"{dead}/team/later:v1"))
    assert failed.value.exit_code == EXIT_RETRYABLE and "without training" in str(failed.value)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["reason"] == "RegistryUnavailable"
    assert [o["kind"] for o in written["outputs"]] == ["model"]  # the model exists; status lists it

    def no_training(self):
        raise AssertionError("the retry trained again")

    monkeypatch.setattr(train.Recipe, "setup", no_training)
    summary = train.run(pushing(f"{registry.host}/team/later:v1"))
    assert summary["phase"] == "Succeeded"
    assert summary["outputs"][0] == written["outputs"][0]
    assert summary["metrics"] == written["metrics"] and summary["progress"] == written["progress"]
    assert registry.manifest("team/later", "v1")[1] == summary["outputs"][1]["digest"]


@pytest.mark.parametrize("status,body,error", [
    (404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}', oci.RegistryRejected),
    (400, b'{"errors":[{"code":"NAME_INVALID"}]}', oci.RegistryRejected),
    (403, b'{"errors":[{"code":"DENIED"}]}', oci.RegistryAuthError),
    (401, b"", oci.RegistryAuthError),
    (503, b"", oci.RegistryUnreachable),
    (429, b"", oci.RegistryUnreachable),
])
def test_registry_answers_map_to_what_a_user_can_do(status, body, error):
    # The answers go-containerregistry's registry never gives (it has no auth and creates any repository), checked
    # on the mapping itself.
    client = oci.Registry(oci.Reference.parse("registry.example.com/team/x:v1"), ("u", "p"))
    found = client._error("PUT", status, body)
    assert type(found) is error
    assert "registry.example.com" in str(found) and "team/x" in str(found)


def test_finetune_run_pushes_with_the_docker_login_config_and_prints_the_outputs(registry, tiny_model_dir,
                                                                                 sentiment_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    import yaml
    from finetune_operator import cli

    proxy = AuthProxy(registry, "dev", "pw")
    try:
        docker = tmp_path / "docker"
        docker.mkdir()
        # As `docker login` writes it: the server key with a scheme, username and password.
        (docker / "config.json").write_text(json.dumps({"auths": {f"http://{proxy.host}/v2/": {
            "username": "dev", "password": "pw"}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))
        monkeypatch.delenv(REGISTRY_AUTH_ENV, raising=False)
        manifest = tmp_path / "job.yaml"
        manifest.write_text(yaml.safe_dump({
            "apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "pushed"},
            "spec": {"model": {"source": str(tiny_model_dir("bert"))}, "task": "sequence-classification",
                     "dataset": {"source": str(sentiment_dir), "maxLength": 32},
                     "strategy": {"type": "lora", "lora": {"r": 4}},
                     "training": {"epochs": 1, "batchSize": 16, "learningRate": 1e-2},
                     "output": {"push": {"reference": f"{proxy.host}/local/pushed:dev", "insecure": True}}}}))
        code = cli.main(["run", str(manifest), "--output", str(tmp_path / "out"), "--no-progress"])
    finally:
        proxy.stop()
    assert code == 0
    status = yaml.safe_load(capsys.readouterr().out)["status"]
    [model, artifact] = status["outputs"]
    _, digest = registry.manifest("local/pushed", "dev")
    model_dir = tmp_path / "out" / "model"
    assert model == {"kind": "model", "uri": str(model_dir), "digest": _sha256sum_digest(model_dir)}
    assert artifact == {"kind": "oci", "uri": f"oci://{proxy.host}/local/pushed:dev@{digest}", "digest": digest}


def test_the_export_record_is_reused_only_for_the_same_config_and_intact_files(registry, pushing, tmp_path):
    from finetune_trainer import export

    config = pushing(f"{registry.host}/team/record:v1")
    train.run(config)
    output = tmp_path / "out"
    elsewhere = config.output.model_copy(update={"push": config.output.push.model_copy(update={
        "reference": "other.example.com/x:y", "secretRef": push.PushSpec.model_validate(
            {"reference": "a.b/c:d", "secretRef": {"name": "s"}}).secret_ref})})
    assert export.load_record(output, config.model_copy(update={"output": elsewhere, "metrics_port": 9090}))
    other_training = config.training.model_copy(update={"learning_rate": 5e-3})
    assert export.load_record(output, config.model_copy(update={"training": other_training})) is None
    with (output / "model" / "config.json").open("a") as f:
        f.write(" ")
    assert export.load_record(output, config) is None


def test_an_auth_entry_that_is_not_base64_is_refused_naming_the_secret(pushing, tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"registry.example.com": {"auth": "not base64!"}}}))
    monkeypatch.setenv(REGISTRY_AUTH_ENV, str(path))
    spec = push.PushSpec.model_validate({"reference": "registry.example.com/t/m:v1",
                                         "secretRef": {"name": "registry-push"}})
    with pytest.raises(RegistryAuthFailed, match="registry.example.com in Secret 'registry-push'"):
        push.credentials(spec, "registry.example.com")
