"""The FineTuneJob models (api.py): what they accept, what they refuse, and with which words."""

import pytest
import yaml

from finetune_operator.manifest import ManifestError, parse_finetunejob

GOOD = """
apiVersion: finetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: demo}
spec:
  model: {source: /models/bert}
  task: sequence-classification
  dataset: {source: /data/reviews, columns: {text: [text], label: label}}
  strategy: {type: partial, layers: "last:2"}
"""


def finetunejob(**spec_overrides):
    doc = yaml.safe_load(GOOD)
    for dotted, value in spec_overrides.items():
        node = doc["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return doc


def refusal(doc) -> str:
    with pytest.raises(ManifestError) as caught:
        parse_finetunejob(doc)
    return str(caught.value)


def test_a_good_finetunejob_gets_the_defaults_the_crd_has():
    parsed = parse_finetunejob(finetunejob())
    assert parsed.spec.training.epochs == 3 and parsed.spec.resources.gpus == 0
    assert parsed.spec.training.batch_size is None  # no CRD default: the trainer config resolves it by strategy
    assert parsed.spec.run_policy.backoff_limit == 3
    assert parsed.wire()["spec"]["strategy"] == {"type": "partial", "layers": "last:2", "embeddings": False,
                                                 "head": True}


@pytest.mark.parametrize("overrides, words", [
    ({"strategy__type": "sideways"}, "spec.strategy.type: Input should be 'full', 'partial', 'hybrid' or 'lora'"),
    ({"model": None}, "spec.model: Field required"),
    ({"resources__gpus": -1}, "spec.resources.gpus: Input should be greater than or equal to 0"),
    ({"strategy__layers": None}, "strategy.layers is required when strategy.type is partial or hybrid"),
    ({"strategy__layers": "last two"}, "spec.strategy.layers: String should match pattern"),
    ({"strategy__lora": {"r": 4}}, "strategy.lora is allowed only when strategy.type is lora or hybrid"),
    ({"training__learningRate": 0}, "spec.training.learningRate: Input should be greater than 0"),
    ({"training__batchsize": 8}, "spec.training.batchsize: unknown field"),
    ({"dataset__eval": "dev", "dataset__evalFraction": 0.2}, "dataset.eval and dataset.evalFraction are exclusive"),
    ({"output__push": {"reference": "team/model:v1"}}, "spec.output.push.reference: 'team/model:v1' "
                                                      "is not registry/repository:tag"),
    ({"output__push": {"reference": "registry.example.com/team/model"}}, "is not registry/repository:tag"),
    ({"output__push": {"reference": "registry.example.com/Team/model:v1"}}, "is not registry/repository:tag"),
    ({"output__push": {"reference": "https://registry.example.com/team/model:v1"}}, "is not registry/repository:tag"),
    ({"output__push": {"reference": "r.example.com/m:v1", "secretRef": {"name": "Bad_Name"}}},
     "spec.output.push.secretRef.name: String should match pattern"),
    ({"output__push": {"reference": "r.example.com/m:v1", "insecure": "maybe"}},
     "spec.output.push.insecure: Input should be a valid boolean"),
    ({"queueName": "Team_A"}, "spec.queueName: String should match pattern"),  # Kueue's webhook would refuse the Job
    ({"training__batchTokens": 4096}, "spec: training.batchTokens applies only to task causal-lm"),
    ({"task": "causal-lm", "dataset__columns": None, "training__batchTokens": 64},
     "spec: training.batchTokens must be at least dataset.maxLength (default 128)"),
    ({"task": "causal-lm", "training__batchTokens": 4}, "spec.training.batchTokens: Input should be greater than or "
                                                        "equal to 8"),
    ({"strategy": {"type": "lora", "lora": {"quantization": "nf4"}}},
     "spec.strategy.lora.quantization (4-bit base weights, QLoRA) needs GPUs, where bitsandbytes' 4-bit kernels run: "
     "set spec.resources.gpus to at least 1"),
    ({"strategy": {"type": "lora", "lora": {"quantization": "int8"}}, "resources__gpus": 1},
     "spec.strategy.lora.quantization: Input should be 'nf4' or 'fp4'"),
    ({"strategy": {"type": "hybrid", "layers": "last:1", "lora": {"quantization": "nf4"}}, "resources__gpus": 1},
     "strategy.lora.quantization (4-bit base weights, QLoRA) is allowed only when strategy.type is lora"),
])
def test_bad_specs_are_refused_naming_the_field(overrides, words):
    assert words in refusal(finetunejob(**overrides))


def test_batch_tokens_of_a_causal_lm_job_at_least_its_max_length_are_accepted():
    parsed = parse_finetunejob(finetunejob(task="causal-lm", dataset__columns=None, dataset__maxLength=512,
                                           training__batchTokens=512))
    assert parsed.spec.training.batch_tokens == 512


def test_qlora_on_gpus_is_admitted():
    parsed = parse_finetunejob(finetunejob(strategy={"type": "lora", "lora": {"quantization": "nf4"}},
                                           resources__gpus=1))
    assert parsed.spec.strategy.lora.quantization == "nf4"


def test_name_too_long_for_child_names():
    doc = finetunejob()
    doc["metadata"]["name"] = "x" * 60
    assert "metadata.name: String should have at most 52 characters" in refusal(doc)


@pytest.mark.parametrize("reference", ["registry.example.com/team/model:v1", "localhost:5000/m:latest",
                                       "10.245.0.1:5000/fto/e2e:run-1", "localhost/a/b/c:1.0_rc-2",
                                       "ghcr.io/org/my__model.x:V1"])
def test_push_references_the_registries_accept(reference):
    parsed = parse_finetunejob(finetunejob(output__push={"reference": reference}))
    assert parsed.spec.output.push.reference == reference and parsed.spec.output.push.insecure is False


@pytest.mark.parametrize("field, value", [
    ("model__source", "s3://models/bert"), ("dataset__source", "s3://data"),
    ("output__location", "s3://checkpoints/runs/demo"),
])
def test_s3_locations_are_admitted(field, value):
    parse_finetunejob(finetunejob(**{field: value}))


@pytest.mark.parametrize("field, value", [
    ("model__source", "gs://models/bert"),  # no GCS client: refused rather than failing at run time
    ("output__location", "s3://Bad_Bucket/x"), ("dataset__source", "s3://"),
], ids=["gs", "s3-bucket-name", "s3-no-bucket"])
def test_locations_without_a_client_or_a_valid_bucket_are_refused(field, value):
    assert field.replace("__", ".") in refusal(finetunejob(**{field: value}))


def test_storage_s3_reads_as_written_and_refuses_what_it_does_not_know():
    s3 = {"endpoint": "http://10.245.0.1:8333", "region": "us-east-1", "addressingStyle": "path",
          "secretRef": {"name": "s3-credentials"}}
    ftj = parse_finetunejob(finetunejob(storage={"s3": s3}))
    assert ftj.spec.storage.s3.secret_ref.access_key_id_key == "AWS_ACCESS_KEY_ID"
    assert "spec.storage.s3.addressingStyle" in refusal(finetunejob(storage={"s3": {**s3, "addressingStyle": "dns"}}))
    assert "spec.storage.s3.endpoint" in refusal(finetunejob(storage={"s3": {**s3, "endpoint": "10.0.0.1:8333"}}))
    assert "spec.storage.s3.secretRef.accessKey" in refusal(
        finetunejob(storage={"s3": {**s3, "secretRef": {"name": "x", "accessKey": "k"}}}))
