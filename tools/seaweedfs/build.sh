#!/usr/bin/env bash
# Build SeaweedFS's `weed` (github.com/seaweedfs/seaweedfs, Apache-2.0) from its Go module into
# ${FTO_SEAWEEDFS_CACHE:-$HOME/.cache/finetune-operator/seaweedfs}/<version>/bin: one binary whose `weed server -s3`
# runs a master, a volume server, a filer and the S3 gateway, the real S3 server the object-storage tests use
# (tests/s3_live.py). Built only when missing; the last line printed is the bin dir (tools/go-tool.sh).
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

cache="${FTO_SEAWEEDFS_CACHE:-$HOME/.cache/finetune-operator/seaweedfs}"
bin="$cache/${SEAWEEDFS_MODULE_VERSION}/bin"
go_tool_args "${1:-}" "$bin" "$bin/weed"

if [[ ! -x "$bin/weed" ]]; then
  go_tool_workdir "$bin"
  t=$SECONDS
  echo "build.sh: go build weed (seaweedfs ${SEAWEEDFS_MODULE_VERSION})" >&2
  # `go install module@version` refuses a module whose go.mod has replace directives (seaweedfs replaces
  # go-bip39, deleted from GitHub), so build it as the main module: from a writable copy of its source.
  src="$(go_module_dir "github.com/seaweedfs/seaweedfs@${SEAWEEDFS_MODULE_VERSION}")"
  cp -r "$src" "$GO_TOOL_TMP/src" && chmod -R u+w "$GO_TOOL_TMP/src"
  (cd "$GO_TOOL_TMP/src" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$GO_TOOL_TMP/weed" ./weed)
  mv "$GO_TOOL_TMP/weed" "$bin/weed"
  echo "build.sh: built weed in $((SECONDS - t))s" >&2
fi
echo "$bin"
