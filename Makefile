# README's two commands are `make quickstart` and `make test`; .ci/run calls `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= trainer,operator,dev

.PHONY: setup quickstart test test-fast plane crd clean

$(PY): pyproject.toml tools/install.sh
	tools/install.sh --venv $(VENV) --editable $(EXTRAS)
	touch $(PY)

setup: $(PY)

quickstart: $(PY)
	HF_HUB_OFFLINE=1 $(VENV)/bin/finetune run examples/quickstart.yaml

# The control plane (tools/k8s) is built once per machine and cached; the cluster tests start it.
plane:
	tools/k8s/build.sh

test: $(PY) plane
	FTO_REQUIRE_CLUSTER=1 HF_HUB_OFFLINE=1 $(PY) -m pytest

# Everything but the cluster tests, for a machine without the control plane.
test-fast: $(PY)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not cluster"

crd: $(PY)
	$(VENV)/bin/finetune crd > crds/finetune.io_finetunejobs.yaml
	$(PY) tools/sync-chart-crd.py

clean:
	rm -rf runs .pytest_cache
