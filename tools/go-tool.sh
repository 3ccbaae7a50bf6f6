# shellcheck shell=bash
# Sourced by the tools/*/build.sh scripts that build a server from its Go module into a per-version cache folder
# (prometheus, registry, seaweedfs, kueue): the command line they share and the steps of a build they all take.
# tools/k8s/build.sh predates it and builds a whole workspace of modules its own way.

# go_tool_args ARG BIN WANTED...: the shared command line. --print-bin-dir prints BIN, --check exits 0 when every
# WANTED file exists (1 otherwise, naming the first missing one); both build nothing and exit. "" goes on to build.
go_tool_args() {
  local arg="$1" bin="$2"; shift 2
  case "$arg" in
    --print-bin-dir) echo "$bin"; exit 0 ;;
    --check)
      for f in "$@"; do [[ -e "$f" ]] || { echo "missing: $f" >&2; exit 1; }; done
      exit 0 ;;
    "") ;;
    *) echo "usage: $0 [--print-bin-dir|--check]" >&2; exit 2 ;;
  esac
}

# go_tool_workdir BIN: a temporary folder inside BIN, removed on exit, for the binaries being built: they are
# moved into BIN only when complete, so an interrupted build never leaves a half-written binary that --check
# would accept.
go_tool_workdir() {
  command -v go >/dev/null || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }
  mkdir -p "$1"
  GO_TOOL_TMP="$(mktemp -d "$1/.build.XXXXXX")"
  trap 'rm -rf "$GO_TOOL_TMP"' EXIT
}

# go_module_dir MODULE@VERSION: the module's source folder in the Go module cache (downloaded if missing),
# read-only, for the files it ships beside its code (CRDs, manifests) or for a build as the main module.
go_module_dir() {
  local dir
  dir="$(cd / && go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$dir" ]] || { echo "build.sh: go mod download $1 gave no source folder" >&2; exit 1; }
  echo "$dir"
}
