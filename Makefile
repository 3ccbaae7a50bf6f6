# README's two commands are `make quickstart` and `make test`; .ci/run calls `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= trainer,operator,dev

.PHONY: setup quickstart test test-fast system prerequisites plane images crd clean

$(PY): pyproject.toml tools/install.sh
	tools/install.sh --venv $(VENV) --editable $(EXTRAS)
	touch $(PY)

setup: $(PY)

quickstart: $(PY)
	HF_HUB_OFFLINE=1 $(VENV)/bin/finetune run examples/quickstart.yaml

# Debian packages of the real node and the image builds (tools/install-system.sh), installed when missing.
system:
	tools/install-system.sh

# The control plane and real node (tools/k8s), Prometheus (tools/prometheus), the OCI registry (tools/registry),
# the S3 server (tools/seaweedfs), Kueue (tools/kueue) and the images (tools/images) are built once per machine and
# cached; the cluster and e2e tests start the plane and load the images. The Go builds run one after the other
# beside the image build: Go is CPU-bound, the image build mostly writes files.
plane: system
	tools/k8s/build.sh
	tools/prometheus/build.sh
	tools/registry/build.sh
	tools/seaweedfs/build.sh
	tools/kueue/build.sh

images: system
	tools/images/build.sh all

prerequisites: system $(PY)
	$(MAKE) --no-print-directory -j2 plane images

test: prerequisites
	FTO_REQUIRE_CLUSTER=1 HF_HUB_OFFLINE=1 $(PY) -m pytest

# Everything but the cluster tests, for a machine without the control plane.
test-fast: $(PY)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not cluster"

crd: $(PY)
	$(VENV)/bin/finetune crd > crds/finetune.io_finetunejobs.yaml
	$(PY) tools/sync-chart-crd.py

clean:
	rm -rf runs .pytest_cache
