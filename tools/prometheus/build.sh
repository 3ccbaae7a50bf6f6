#!/usr/bin/env bash
# Build Prometheus and promtool from Go modules (github.com/prometheus/prometheus, Apache-2.0; no release tarball,
# no registry), only the two commands, into ${FTO_PROM_CACHE:-$HOME/.cache/finetune-operator/prometheus}/<version>/bin.
# Only what is missing is built, and the last line printed is the bin dir (tools/go-tool.sh).
# Only the service discovery the tests use is linked in (tags remove_all_sd,enable_kubernetes_sd: file, http and
# kubernetes SD), which leaves out the cloud providers' SDKs (AWS, Azure, GCE, ...). The web UI's assets are not
# embedded (no `builtinassets` tag): the HTTP API, which the tests use, is complete.
# prometheus-operator's CRDs for the kinds the chart ships (ServiceMonitor, PodMonitor, PrometheusRule) are copied
# from its Go module into <bin>/../crds, so the apiserver checks the chart's monitors against the real schemas.
#
# Usage: build.sh                 build what is missing; the last line printed is the bin dir
#        build.sh --print-bin-dir print the bin dir and exit (builds nothing)
#        build.sh --check         exit 0 if both binaries and the CRDs are present, 1 otherwise (builds nothing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
# shellcheck source=../go-tool.sh
. "$here/../go-tool.sh"

cache="${FTO_PROM_CACHE:-$HOME/.cache/finetune-operator/prometheus}"
tags=remove_all_sd,enable_kubernetes_sd
bin="$cache/${PROMETHEUS_MODULE_VERSION}-${tags//,/-}/bin"  # the tags in the key: another set is another build
all=(prometheus promtool)
crds="$(dirname "$bin")/crds"
crd_files=(servicemonitors podmonitors prometheusrules)
wanted=("${all[@]/#/$bin/}")
for c in "${crd_files[@]}"; do wanted+=("$crds/monitoring.coreos.com_$c.yaml"); done
go_tool_args "${1:-}" "$bin" "${wanted[@]}"

missing=()
for b in "${all[@]}"; do [[ -x "$bin/$b" ]] || missing+=("$b"); done
if ((${#missing[@]})); then
  go_tool_workdir "$bin"
  t=$SECONDS
  pkgs=()
  for b in "${missing[@]}"; do pkgs+=("github.com/prometheus/prometheus/cmd/$b@${PROMETHEUS_MODULE_VERSION}"); done
  # Version stamps as the official build sets them, so `prometheus --version` and /api/v1/status/buildinfo say
  # which release this is.
  ld="-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION}"
  ld+=" -X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.BuildUser=fto"
  echo "build.sh: go install ${missing[*]} (prometheus ${PROMETHEUS_MODULE_VERSION})" >&2
  CGO_ENABLED=0 GOBIN="$GO_TOOL_TMP" go install -trimpath -tags "$tags" -ldflags="$ld" "${pkgs[@]}"
  for b in "${missing[@]}"; do mv "$GO_TOOL_TMP/$b" "$bin/$b"; done
  echo "build.sh: built ${missing[*]} in $((SECONDS - t))s" >&2
fi
if [[ ! -f "$crds/monitoring.coreos.com_${crd_files[-1]}.yaml" ]]; then
  dir="$(go_module_dir "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_MODULE_VERSION}")"
  mkdir -p "$crds"
  for c in "${crd_files[@]}"; do cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$c.yaml" "$crds/"; done
  chmod 644 "$crds"/*.yaml
  echo "build.sh: prometheus-operator ${PROMETHEUS_OPERATOR_MODULE_VERSION} CRDs in $crds" >&2
fi
echo "$bin"
