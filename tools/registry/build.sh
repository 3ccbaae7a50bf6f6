#!/usr/bin/env bash
# Build crane from Go modules (github.com/google/go-containerregistry, Apache-2.0) into
# ${FTO_REGISTRY_CACHE:-$HOME/.cache/finetune-operator/registry}/<version>/bin. One binary serves both roles the
# export tests need: `crane registry serve --address HOST:PORT` is go-containerregistry's OCI distribution server
# (the cmd/registry server with a listen address of its own, which cmd/registry lacks: it binds every interface),
# and `crane manifest`/`crane blob` are an independent client that reads back what the trainer pushed.
# Like tools/prometheus/build.sh: only what is missing is built, and the last line printed is the bin dir.
#
# Usage: build.sh                 build what is missing; the last line printed is the bin dir
#        build.sh --print-bin-dir print the bin dir and exit (builds nothing)
#        build.sh --check         exit 0 if the binary is present, 1 otherwise (builds nothing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

cache="${FTO_REGISTRY_CACHE:-$HOME/.cache/finetune-operator/registry}"
bin="$cache/${GGCR_MODULE_VERSION}/bin"

case "${1:-}" in
  --print-bin-dir) echo "$bin"; exit 0 ;;
  --check) [[ -x "$bin/crane" ]] || { echo "missing: $bin/crane" >&2; exit 1; }; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-bin-dir|--check]" >&2; exit 2 ;;
esac

if [[ ! -x "$bin/crane" ]]; then
  command -v go >/dev/null || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }
  mkdir -p "$bin"
  tmp="$(mktemp -d "$bin/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  t=$SECONDS
  echo "build.sh: go install crane (go-containerregistry ${GGCR_MODULE_VERSION})" >&2
  CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags="-s -w" \
    "github.com/google/go-containerregistry/cmd/crane@${GGCR_MODULE_VERSION}"
  mv "$tmp/crane" "$bin/crane"
  echo "build.sh: built crane in $((SECONDS - t))s" >&2
fi
echo "$bin"
