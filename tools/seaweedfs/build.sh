#!/usr/bin/env bash
# Build SeaweedFS's `weed` (github.com/seaweedfs/seaweedfs, Apache-2.0) from its Go module into
# ${FTO_SEAWEEDFS_CACHE:-$HOME/.cache/finetune-operator/seaweedfs}/<version>/bin: one binary whose `weed server -s3`
# runs a master, a volume server, a filer and the S3 gateway, the real S3 server the object-storage tests use
# (tests/s3_live.py). Like tools/prometheus/build.sh: built only when missing; the last line printed is the bin dir.
#
# Usage: build.sh                 build what is missing; the last line printed is the bin dir
#        build.sh --print-bin-dir print the bin dir and exit (builds nothing)
#        build.sh --check         exit 0 if the binary is present, 1 otherwise (builds nothing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

cache="${FTO_SEAWEEDFS_CACHE:-$HOME/.cache/finetune-operator/seaweedfs}"
bin="$cache/${SEAWEEDFS_MODULE_VERSION}/bin"

case "${1:-}" in
  --print-bin-dir) echo "$bin"; exit 0 ;;
  --check) [[ -x "$bin/weed" ]] || { echo "missing: $bin/weed" >&2; exit 1; }; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-bin-dir|--check]" >&2; exit 2 ;;
esac

if [[ ! -x "$bin/weed" ]]; then
  command -v go >/dev/null || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }
  mkdir -p "$bin"
  tmp="$(mktemp -d "$bin/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  t=$SECONDS
  echo "build.sh: go build weed (seaweedfs ${SEAWEEDFS_MODULE_VERSION})" >&2
  # `go install module@version` refuses a module whose go.mod has replace directives (seaweedfs replaces
  # go-bip39, deleted from GitHub), so build it as the main module: from a writable copy of its source.
  src="$(go mod download -json "github.com/seaweedfs/seaweedfs@${SEAWEEDFS_MODULE_VERSION}" |
         sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$src" ]] || { echo "build.sh: go mod download gave no source directory" >&2; exit 1; }
  cp -r "$src" "$tmp/src" && chmod -R u+w "$tmp/src"
  (cd "$tmp/src" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tmp/weed" ./weed)
  mv "$tmp/weed" "$bin/weed"
  echo "build.sh: built weed in $((SECONDS - t))s" >&2
fi
echo "$bin"
