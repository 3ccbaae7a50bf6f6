#!/usr/bin/env bash
# Build the Kueue controller manager from its Go module (sigs.k8s.io/kueue, Apache-2.0; no image, no registry)
# into ${FTO_KUEUE_CACHE:-$HOME/.cache/finetune-operator/kueue}/<version>/bin, and copy what the module ships beside
# it that the tests install: the CRDs (config/components/crd/bases) into <version>/crds and the webhook
# configurations (config/components/webhook/manifests.yaml) into <version>/webhook, read from the Go module cache.
# Only what is missing is built, and the last line printed is the bin dir (tools/go-tool.sh).
#
# Usage: build.sh                 build what is missing; the last line printed is the bin dir
#        build.sh --print-bin-dir print the bin dir and exit (builds nothing)
#        build.sh --check         exit 0 if the binary, the CRDs and the webhook manifests are present, 1 otherwise
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
# shellcheck source=../go-tool.sh
. "$here/../go-tool.sh"

cache="${FTO_KUEUE_CACHE:-$HOME/.cache/finetune-operator/kueue}"
root="$cache/${KUEUE_VERSION}"
bin="$root/bin"
go_tool_args "${1:-}" "$bin" "$bin/kueue" "$root/crds/kueue.x-k8s.io_workloads.yaml" "$root/webhook/manifests.yaml"

if [[ ! -x "$bin/kueue" ]]; then
  go_tool_workdir "$bin"
  t=$SECONDS
  # The version stamp as Kueue's Makefile sets it, so the manager logs which release it is.
  ld="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=${KUEUE_VERSION}"
  echo "build.sh: go install sigs.k8s.io/kueue/cmd/kueue@${KUEUE_VERSION}" >&2
  CGO_ENABLED=0 GOBIN="$GO_TOOL_TMP" go install -trimpath -ldflags="$ld" "sigs.k8s.io/kueue/cmd/kueue@${KUEUE_VERSION}"
  mv "$GO_TOOL_TMP/kueue" "$bin/kueue"
  echo "build.sh: built kueue in $((SECONDS - t))s" >&2
fi
if [[ ! -e "$root/crds/kueue.x-k8s.io_workloads.yaml" || ! -e "$root/webhook/manifests.yaml" ]]; then
  # The module's own files, at the version the binary was built from (go install downloaded it already).
  src="$(go_module_dir "sigs.k8s.io/kueue@${KUEUE_VERSION}")"
  [[ -d "$src/config/components/crd/bases" ]] || { echo "build.sh: no CRDs in the module at '$src'" >&2; exit 1; }
  mkdir -p "$root/crds" "$root/webhook"
  cp "$src"/config/components/crd/bases/*.yaml "$root/crds/"
  cp "$src/config/components/webhook/manifests.yaml" "$root/webhook/manifests.yaml"
  chmod -R u+w "$root/crds" "$root/webhook"  # the module cache is read-only
fi
echo "$bin"
