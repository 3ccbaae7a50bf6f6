#!/usr/bin/env bash
# Build Prometheus and promtool from Go modules (github.com/prometheus/prometheus, Apache-2.0; no release tarball,
# no registry), only the two commands, into ${FTO_PROM_CACHE:-$HOME/.cache/finetune-operator/prometheus}/<version>/bin.
# Like tools/k8s/build.sh: only what is missing is built, and the last line printed is the bin dir.
# Only the service discovery the tests use is linked in (tags remove_all_sd,enable_kubernetes_sd: file, http and
# kubernetes SD), which leaves out the cloud providers' SDKs (AWS, Azure, GCE, ...). The web UI's assets are not
# embedded (no `builtinassets` tag): the HTTP API, which the tests use, is complete.
# prometheus-operator's CRDs for the kinds the chart ships (ServiceMonitor, PodMonitor, PrometheusRule) are copied
# from its Go module into <bin>/../crds, so the apiserver checks the chart's monitors against the real schemas.
#
# Usage: build.sh                 build what is missing; the last line printed is the bin dir
#        build.sh --print-bin-dir print the bin dir and exit (builds nothing)
#        build.sh --check         exit 0 if both binaries are present, 1 otherwise (builds nothing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

cache="${FTO_PROM_CACHE:-$HOME/.cache/finetune-operator/prometheus}"
tags=remove_all_sd,enable_kubernetes_sd
bin="$cache/${PROMETHEUS_MODULE_VERSION}-${tags//,/-}/bin"  # the tags in the key: another set is another build
all=(prometheus promtool)
crds="$(dirname "$bin")/crds"
crd_files=(servicemonitors podmonitors prometheusrules)

case "${1:-}" in
  --print-bin-dir) echo "$bin"; exit 0 ;;
  --check)
    for b in "${all[@]}"; do [[ -x "$bin/$b" ]] || { echo "missing: $bin/$b" >&2; exit 1; }; done
    for c in "${crd_files[@]}"; do
      [[ -f "$crds/monitoring.coreos.com_$c.yaml" ]] || { echo "missing: $crds/monitoring.coreos.com_$c.yaml" >&2; exit 1; }
    done
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-bin-dir|--check]" >&2; exit 2 ;;
esac

missing=()
for b in "${all[@]}"; do [[ -x "$bin/$b" ]] || missing+=("$b"); done
if ((${#missing[@]})); then
  command -v go >/dev/null || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }
  mkdir -p "$bin"
  tmp="$(mktemp -d "$bin/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  t=$SECONDS
  pkgs=()
  for b in "${missing[@]}"; do pkgs+=("github.com/prometheus/prometheus/cmd/$b@${PROMETHEUS_MODULE_VERSION}"); done
  # Version stamps as the official build sets them, so `prometheus --version` and /api/v1/status/buildinfo say
  # which release this is.
  ld="-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION}"
  ld+=" -X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.BuildUser=fto"
  echo "build.sh: go install ${missing[*]} (prometheus ${PROMETHEUS_MODULE_VERSION})" >&2
  CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -tags "$tags" -ldflags="$ld" "${pkgs[@]}"
  for b in "${missing[@]}"; do mv "$tmp/$b" "$bin/$b"; done
  echo "build.sh: built ${missing[*]} in $((SECONDS - t))s" >&2
fi
if [[ ! -f "$crds/monitoring.coreos.com_${crd_files[-1]}.yaml" ]]; then
  module=github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_MODULE_VERSION}
  dir="$(cd / && go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n "$dir" ]] || { echo "build.sh: go mod download $module gave no Dir" >&2; exit 1; }
  mkdir -p "$crds"
  for c in "${crd_files[@]}"; do cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$c.yaml" "$crds/"; done
  chmod 644 "$crds"/*.yaml
  echo "build.sh: prometheus-operator ${PROMETHEUS_OPERATOR_MODULE_VERSION} CRDs in $crds" >&2
fi
echo "$bin"
