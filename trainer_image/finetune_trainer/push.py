"""``output.push``: the exported model as an OCI artifact, with its lineage, in a registry.

The artifact is an OCI image manifest as ORAS writes them: ``artifactType`` says what it is
(``application/vnd.finetune.model.v1`` for a merged or fully trained model, ``application/vnd.finetune.adapter.v1``
for a PEFT adapter), the config is the empty descriptor (``application/vnd.oci.empty.v1+json``, ``{}``), as the
image spec recommends for artifacts that are not images, and each file of ``<output>/model`` is one layer named by
its ``org.opencontainers.image.title`` (its path in the model folder). One layer per file, not one tar: the
registry skips the blobs it has (a retried push sends only what did not arrive; a tokenizer shared by many models
is stored once), each file's digest is checked on upload, and ``oras pull`` writes the folder back as it was.
Weights (``.safetensors``, ``.bin``) are ``application/vnd.finetune.model.weights.v1``, every other file
``application/vnd.finetune.model.file.v1``.

The lineage is in the manifest's annotations, readable without pulling a blob: the base model's source and
revision, the strategy, the dataset fingerprint, the evaluation metrics, the FineTuneJob's name and uid, the model
digest that status reports for ``output.location``, and the standard ``org.opencontainers.image.*`` keys.

Credentials: a ``kubernetes.io/dockerconfigjson`` Secret (``output.push.secretRef``), which the operator mounts
and names in ``$FINETUNE_REGISTRY_AUTH``; without it (``finetune run``) the Docker config that ``docker login``
writes (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``). Credential helpers are not run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path

from finetune_trainer import locations, oci
from finetune_trainer.config import DatasetSpec, TrainerConfig
from finetune_trainer.errors import RegistryAuthFailed, RegistryRejected, RegistryUnavailable, TrainerError
from finetune_trainer.export import Exported, tree_digest
from finetune_trainer.output_spec import JOB_UID_ENV, REGISTRY_AUTH_ENV, REGISTRY_SECRET_KEY, PushSpec

log = logging.getLogger("finetune_trainer")

ARTIFACT_TYPES = {"model": "application/vnd.finetune.model.v1", "adapter": "application/vnd.finetune.adapter.v1"}
EMPTY_CONFIG = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "data": "e30=",
                "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
WEIGHTS_MEDIA_TYPE = "application/vnd.finetune.model.weights.v1"
FILE_MEDIA_TYPE = "application/vnd.finetune.model.file.v1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


# ---------------------------------------------------------------------------------------------- lineage

def dataset_fingerprint(dataset: DatasetSpec) -> str:
    """sha256 over what was read: the dataset spec as written (source, splits, columns, format) and, for data on a
    path or a claim, the digest of its files (export.tree_digest). Remote data (hf://) is named by its URI only."""
    digest = hashlib.sha256(json.dumps(dataset.wire(), sort_keys=True).encode())
    if not dataset.source.startswith(locations.REMOTE_SCHEMES):
        path = locations.local_path(dataset.source)
        if path.exists():
            digest.update(tree_digest(path)[0].encode())
    return f"sha256:{digest.hexdigest()}"


def lineage(config: TrainerConfig) -> dict[str, str]:
    """Where the model came from, fixed at export (the data may change later; the record keeps what was read)."""
    return {
        "io.finetune.base.source": config.model.source,
        "io.finetune.base.revision": config.model.revision,
        "io.finetune.task": str(config.task),
        "io.finetune.strategy": str(config.strategy.type),
        "io.finetune.strategy.spec": json.dumps(config.strategy.wire(), sort_keys=True, separators=(",", ":")),
        "io.finetune.dataset.source": config.dataset.source,
        "io.finetune.dataset.fingerprint": dataset_fingerprint(config.dataset),
        "io.finetune.job.name": config.name,
        "io.finetune.job.uid": os.environ.get(JOB_UID_ENV, ""),
    }


def annotations(exported: Exported) -> dict[str, str]:
    base = exported.lineage
    notes = {
        "org.opencontainers.image.created": exported.created,
        "org.opencontainers.image.title": base["io.finetune.job.name"],
        "org.opencontainers.image.description": f"{base['io.finetune.strategy']} fine-tune of "
                                                f"{base['io.finetune.base.source']} for {base['io.finetune.task']}",
        # The model is built from the base model: its source and revision are this artifact's source.
        "org.opencontainers.image.source": base["io.finetune.base.source"],
        "org.opencontainers.image.revision": base["io.finetune.base.revision"],
        **base,
        "io.finetune.model.digest": exported.digest,
        "io.finetune.metrics": json.dumps(_quality(exported.run.get("metrics", {})), sort_keys=True,
                                          separators=(",", ":")),
    }
    return {k: v for k, v in notes.items() if v}


def _quality(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics that describe the model (evaluation and final training loss), as the summary rounds them; not
    the run's throughput."""
    return {k: round(v, 6) for k, v in metrics.items() if k.startswith("eval") or k == "trainLoss"}


def manifest(exported: Exported) -> bytes:
    layers = [{"mediaType": WEIGHTS_MEDIA_TYPE if name.endswith(WEIGHT_SUFFIXES) else FILE_MEDIA_TYPE,
               "digest": f["digest"], "size": f["size"],
               "annotations": {"org.opencontainers.image.title": name}}
              for name, f in sorted(exported.files.items())]
    return json.dumps({
        "schemaVersion": 2, "mediaType": oci.MANIFEST_MEDIA_TYPE, "artifactType": ARTIFACT_TYPES[exported.form],
        "config": EMPTY_CONFIG, "layers": layers, "annotations": annotations(exported),
    }, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------- credentials

def _auth_file() -> Path:
    if os.environ.get(REGISTRY_AUTH_ENV):
        return Path(os.environ[REGISTRY_AUTH_ENV])
    return Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"


def _source(spec: PushSpec) -> str:
    """Where the credentials come from, as the user knows it: the Secret in a pod, the Docker config locally."""
    if spec.secret_ref and os.environ.get(REGISTRY_AUTH_ENV):
        return f"Secret {spec.secret_ref.name!r} (key {REGISTRY_SECRET_KEY})"
    return str(_auth_file())


def credentials(spec: PushSpec, registry: str) -> tuple[str, str] | None:
    """(user, password) for ``registry`` from the Docker config; None to push anonymously."""
    path = _auth_file()
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except FileNotFoundError:
        if spec.secret_ref:
            hint = ("kubectl create secret docker-registry creates it" if os.environ.get(REGISTRY_AUTH_ENV)
                    else "docker login writes it")
            raise RegistryAuthFailed(f"output.push.secretRef: {_source(spec)} is missing; {hint}",
                                     field="output.push.secretRef") from None
        return None
    except (OSError, ValueError, AttributeError) as exc:
        raise RegistryAuthFailed(f"output.push.secretRef: {_source(spec)} is not a Docker config "
                                 f"({type(exc).__name__})", field="output.push.secretRef") from None
    hosts = {key.split("://", 1)[-1].split("/", 1)[0]: entry for key, entry in auths.items()}
    entry = hosts.get(registry)
    if entry is None:
        if spec.secret_ref:
            raise RegistryAuthFailed(f"output.push.secretRef: {_source(spec)} has no credentials for registry "
                                     f"{registry} (it has: {', '.join(sorted(hosts)) or 'none'})",
                                     field="output.push.secretRef")
        return None
    if not entry.get("auth"):
        return entry.get("username", ""), entry.get("password", "")
    try:
        user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
    except ValueError:  # binascii.Error and UnicodeDecodeError both are
        raise RegistryAuthFailed(f"output.push.secretRef: the auth of registry {registry} in {_source(spec)} is not "
                                 "base64 of user:password", field="output.push.secretRef") from None
    return user, password


# ---------------------------------------------------------------------------------------------- push

def registry(spec: PushSpec) -> oci.Registry:
    ref = oci.Reference.parse(spec.reference)
    return oci.Registry(ref, credentials(spec, ref.registry), insecure=spec.insecure)


def preflight(spec: PushSpec) -> None:
    """Before training: the credentials are there and the registry takes them. An unreachable registry is only a
    warning here, since it may be back by the time the model is; the push at the end decides."""
    try:
        registry(spec).ping()
    except oci.RegistryUnreachable as exc:
        log.warning("output.push: %s; pushing after training anyway", exc)
    except oci.RegistryError as exc:
        raise _failure(exc, spec) from None


def push(spec: PushSpec, model: Path, exported: Exported) -> dict[str, str]:
    """Send every blob the registry lacks, then the manifest; returns status's output entry for the artifact."""
    try:
        client = registry(spec)
        body = manifest(exported)
        sent = 0
        if not client.has_blob(EMPTY_CONFIG["digest"]):
            client.upload_blob(EMPTY_CONFIG["digest"], 2, b"{}")
        for name, f in sorted(exported.files.items()):
            if client.has_blob(f["digest"]):
                continue
            with (model / name).open("rb") as data:
                client.upload_blob(f["digest"], f["size"], data)
            sent += f["size"]
        digest = client.put_manifest(body)
    except oci.RegistryError as exc:
        raise _failure(exc, spec) from None
    log.info("pushed %s@%s (%d files, %d bytes sent)", spec.reference, digest, len(exported.files), sent)
    return {"kind": "oci", "uri": f"oci://{spec.reference}@{digest}", "digest": digest}


def _failure(exc: oci.RegistryError, spec: PushSpec) -> TrainerError:
    if isinstance(exc, oci.RegistryAuthError):
        return RegistryAuthFailed(f"output.push: {exc} (credentials from {_source(spec)})",
                                  field="output.push.secretRef")
    if isinstance(exc, oci.RegistryRejected):
        return RegistryRejected(f"output.push.reference {spec.reference}: {exc}", field="output.push.reference")
    return RegistryUnavailable(f"output.push.reference {spec.reference}: {exc}; the next attempt pushes again "
                               "without training", field="output.push.reference")
