# syntax=docker/dockerfile:1.7
# Two images from one file; both install through tools/install.sh, the same script CI and `make` run.
#
#   docker build --target operator -t finetune-operator:0.1.0 .
#   docker build --target trainer  -t finetune-trainer:0.1.0 .                       # CUDA (default)
#   docker build --target trainer  --build-arg VARIANT=cpu -t finetune-trainer:0.1.0-cpu .
#
# VARIANT=cuda uses the package index's torch (PyPI's wheels bundle the CUDA runtime; the node supplies the
# driver). VARIANT=cpu adds PyTorch's CPU wheel index (TORCH_INDEX_URL, default https://download.pytorch.org/whl/cpu;
# set it to a mirror where that is unreachable): no nvidia-* wheels and no triton, 4 GB of the 6.6 GB CUDA image.
#
# Optional build secrets, never stored in a layer: `pip.conf` (mounted as /etc/pip.conf: index, find-links, ...)
# and `pip-ca` (a CA bundle, at /run/secrets/pip-ca.crt, for a pip.conf that says `cert = /run/secrets/pip-ca.crt`).
# tools/images/build.sh passes the building machine's own pip configuration this way, and builds with buildah
# from a Debian base made with debootstrap (PYTHON_IMAGE) where no registry is reachable.
# pip's cache is a cache mount (id=pip), outside the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN groupadd --gid 1000 finetune && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin finetune
WORKDIR /src
# Dependencies first: pyproject.toml and install.sh with empty stand-ins for the packages and README, so the
# layer holding torch is rebuilt when the dependencies change, not on every code change.
COPY pyproject.toml LICENSE ./
COPY tools/install.sh tools/install.sh
RUN mkdir -p operator/finetune_operator/notify trainer_image/finetune_trainer/tasks \
    && touch README.md operator/finetune_operator/__init__.py operator/finetune_operator/notify/__init__.py \
        trainer_image/finetune_trainer/__init__.py trainer_image/finetune_trainer/tasks/__init__.py

FROM base AS operator
RUN --mount=type=cache,id=pip,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca.crt \
    tools/install.sh --venv /opt/venv operator && rm -rf build ./*.egg-info
COPY README.md ./
COPY operator operator
COPY trainer_image trainer_image
# The same command on the real sources: the dependencies are satisfied, only the project is reinstalled.
RUN --mount=type=cache,id=pip,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca.crt \
    tools/install.sh --venv /opt/venv operator && cd / && rm -rf /src
ENV PATH=/opt/venv/bin:$PATH
USER 1000:1000
WORKDIR /home/finetune
# metrics, /healthz (the Helm chart's probes)
EXPOSE 8080 8081
ENTRYPOINT ["finetune", "operator"]

FROM base AS trainer
ARG VARIANT=cuda
# The CUDA image adds bitsandbytes (extra qlora: 4-bit base weights, strategy.lora.quantization), which needs CUDA.
ARG TORCH_INDEX_URL=""
# An extra index for torch only adds candidates: for the same version its `+cpu` wheel sorts above PyPI's. pip
# skips an index it cannot reach, so a CPU image whose torch came from PyPI (CUDA) fails the check at the end.
RUN --mount=type=cache,id=pip,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca.crt \
    index="$TORCH_INDEX_URL"; gpu_extras=,qlora; \
    if [ "$VARIANT" = cpu ]; then gpu_extras=""; [ -n "$index" ] || index=https://download.pytorch.org/whl/cpu; fi; \
    if [ -n "$index" ]; then export PIP_EXTRA_INDEX_URL="$index"; fi \
    && tools/install.sh --venv /opt/venv trainer$gpu_extras && rm -rf build ./*.egg-info \
    && if [ "$VARIANT" = cpu ]; then /opt/venv/bin/python -c 'import sys, torch; sys.exit(torch.version.cuda and \
        f"VARIANT=cpu, but torch {torch.__version__} is a CUDA build: is TORCH_INDEX_URL reachable?")'; fi
COPY README.md ./
COPY operator operator
COPY trainer_image trainer_image
RUN --mount=type=cache,id=pip,target=/root/.cache/pip,sharing=locked \
    --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca.crt \
    gpu_extras=,qlora; if [ "$VARIANT" = cpu ]; then gpu_extras=""; fi; \
    tools/install.sh --venv /opt/venv trainer$gpu_extras && cd / && rm -rf /src
# Hugging Face caches go to a writable emptyDir (the root filesystem is read-only in the pod).
ENV PATH=/opt/venv/bin:$PATH HF_HOME=/tmp/hf-home FINETUNE_PVC_ROOT=/mnt/pvc
USER 1000:1000
WORKDIR /home/finetune
EXPOSE 9090
ENTRYPOINT ["python", "-m", "finetune_trainer"]
CMD ["--config", "/etc/finetune/config.yaml"]
