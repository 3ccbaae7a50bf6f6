# syntax=docker/dockerfile:1.7
# Two images from one file; both install through tools/install.sh, the same script CI and `make` run.
#
#   docker build --target operator -t finetune-operator:0.1.0 .
#   docker build --target trainer  -t finetune-trainer:0.1.0 .                       # CUDA (default)
#   docker build --target trainer  --build-arg VARIANT=cpu -t finetune-trainer:0.1.0-cpu .
#
# VARIANT=cuda uses PyPI's torch wheels, which bundle the CUDA runtime (the node supplies the driver);
# VARIANT=cpu takes torch from PyTorch's CPU wheel index instead and is about 1.5 GB smaller.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 1000 finetune && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin finetune
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tools/install.sh tools/install.sh
COPY operator operator
COPY trainer_image trainer_image

FROM base AS operator
RUN tools/install.sh --venv /opt/venv operator && rm -rf /src
ENV PATH=/opt/venv/bin:$PATH
USER 1000:1000
WORKDIR /home/finetune
# metrics, /healthz (the Helm chart's probes)
EXPOSE 8080 8081
ENTRYPOINT ["finetune", "operator"]

FROM base AS trainer
ARG VARIANT=cuda
RUN if [ "$VARIANT" = cpu ]; then export PIP_INDEX_URL=https://download.pytorch.org/whl/cpu \
        PIP_EXTRA_INDEX_URL=https://pypi.org/simple; fi \
    && tools/install.sh --venv /opt/venv trainer && rm -rf /src
# Hugging Face caches go to a writable emptyDir (the root filesystem is read-only in the pod).
ENV PATH=/opt/venv/bin:$PATH HF_HOME=/tmp/hf-home FINETUNE_PVC_ROOT=/mnt/pvc
USER 1000:1000
WORKDIR /home/finetune
EXPOSE 9090
ENTRYPOINT ["python", "-m", "finetune_trainer"]
CMD ["--config", "/etc/finetune/config.yaml"]
