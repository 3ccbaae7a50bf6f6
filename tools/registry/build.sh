#!/usr/bin/env bash
# Build crane from Go modules (github.com/google/go-containerregistry, Apache-2.0) into
# ${FTO_REGISTRY_CACHE:-$HOME/.cache/finetune-operator/registry}/<version>/bin. One binary serves both roles the
# export tests need: `crane registry serve --address HOST:PORT` is go-containerregistry's OCI distribution server
# (the cmd/registry server with a listen address of its own, which cmd/registry lacks: it binds every interface),
# and `crane manifest`/`crane blob` are an independent client that reads back what the trainer pushed.
# Only what is missing is built, and the last line printed is the bin dir (tools/go-tool.sh).
#
# Usage: build.sh                 build what is missing; the last line printed is the bin dir
#        build.sh --print-bin-dir print the bin dir and exit (builds nothing)
#        build.sh --check         exit 0 if the binary is present, 1 otherwise (builds nothing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
# shellcheck source=../go-tool.sh
. "$here/../go-tool.sh"

cache="${FTO_REGISTRY_CACHE:-$HOME/.cache/finetune-operator/registry}"
bin="$cache/${GGCR_MODULE_VERSION}/bin"
go_tool_args "${1:-}" "$bin" "$bin/crane"

if [[ ! -x "$bin/crane" ]]; then
  go_tool_workdir "$bin"
  t=$SECONDS
  echo "build.sh: go install crane (go-containerregistry ${GGCR_MODULE_VERSION})" >&2
  CGO_ENABLED=0 GOBIN="$GO_TOOL_TMP" go install -trimpath -ldflags="-s -w" \
    "github.com/google/go-containerregistry/cmd/crane@${GGCR_MODULE_VERSION}"
  mv "$GO_TOOL_TMP/crane" "$bin/crane"
  echo "build.sh: built crane in $((SECONDS - t))s" >&2
fi
echo "$bin"
