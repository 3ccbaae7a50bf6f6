#!/usr/bin/env bash
# Build the local control plane binaries from Go modules (no Docker, no release tarballs):
#   kube-apiserver kube-controller-manager kube-scheduler kubectl etcd   (wrapper module tools/k8s/go.mod)
#   kwok helm                                                             (go install <module>@<version>)
# into ${FTO_K8S_CACHE:-$HOME/.cache/finetune-operator/k8s}/<versions>/bin. Only missing binaries are built.
#
# Usage: build.sh                 build what is missing; the last line printed is the bin dir
#        build.sh --print-bin-dir print the bin dir and exit (builds nothing)
#        build.sh --check         exit 0 if every binary is present, 1 otherwise (builds nothing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

key="${K8S_VERSION}-etcd${ETCD_VERSION#v}-kwok${KWOK_VERSION#v}-helm${HELM_VERSION#v}"
cache="${FTO_K8S_CACHE:-$HOME/.cache/finetune-operator/k8s}"
bin="$cache/$key/bin"
core=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)
all=("${core[@]}" kwok helm)

case "${1:-}" in
  --print-bin-dir) echo "$bin"; exit 0 ;;
  --check)
    for b in "${all[@]}"; do [[ -x "$bin/$b" ]] || { echo "missing: $bin/$b" >&2; exit 1; }; done
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-bin-dir|--check]" >&2; exit 2 ;;
esac

command -v go >/dev/null || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }
mkdir -p "$bin"
log() { echo "build.sh: $*" >&2; }
export CGO_ENABLED=0
t_all=$SECONDS
built=0

# -- kubernetes components + etcd from the wrapper module -------------------------------------
missing=()
for b in "${core[@]}"; do [[ -x "$bin/$b" ]] || missing+=("$b"); done
if ((${#missing[@]})); then
  # go.mod must match versions.env (it is generated from it by gen-gomod.sh).
  pins() { awk -v m="$1" -v v="$2" '$1 == m && $2 == v {f = 1} END {exit !f}' "$here/go.mod"; }
  pins k8s.io/kubernetes "$K8S_VERSION" && pins go.etcd.io/etcd/server/v3 "$ETCD_VERSION" ||
    { log "tools/k8s/go.mod does not pin kubernetes ${K8S_VERSION} / etcd ${ETCD_VERSION}; run tools/k8s/gen-gomod.sh"; exit 1; }
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  pkgs=()
  for b in "${missing[@]}"; do
    if [[ $b == etcd ]]; then pkgs+=(go.etcd.io/etcd/server/v3); else pkgs+=("k8s.io/kubernetes/cmd/$b"); fi
  done
  # Same version stamps as the official build (hack/lib/version.sh), so /version, kubectl version
  # and helm's kubeVersion checks see v1.36.x instead of v0.0.0-master.
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=${K8S_VERSION} -X $p.gitMajor=1 -X $p.gitMinor=${minor}"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  log "building ${missing[*]} (k8s.io/kubernetes ${K8S_VERSION}, etcd ${ETCD_VERSION}); a cold build takes a long while on few cores"
  t=$SECONDS
  tmp="$(mktemp -d "$bin/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$here" && go build -mod=readonly -trimpath -ldflags="$ld" -o "$tmp/" "${pkgs[@]}")
  # go names the etcd binary after its module path (go.etcd.io/etcd/server/v3 -> "server")
  if [[ -f "$tmp/server" ]]; then mv "$tmp/server" "$tmp/etcd"; fi
  for b in "${missing[@]}"; do mv "$tmp/$b" "$bin/$b"; done
  log "built ${missing[*]} in $((SECONDS - t))s"
  built=1
fi

# -- kwok, helm: go install at pinned versions (own go.mod, so their tested dependency set) ----
gi() { # name module/cmd version [extra ldflags]
  local name=$1 pkg=$2 ver=$3 extra=${4:-} t=$SECONDS
  [[ -x "$bin/$name" ]] && return 0
  log "go install $pkg@$ver"
  GOBIN="$bin" go install -trimpath -ldflags="-s -w $extra" "$pkg@$ver"
  log "built $name in $((SECONDS - t))s"
  built=1
}
gi kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
gi helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
  "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

if ((built)); then log "all binaries ready in $((SECONDS - t_all))s"; else log "all binaries already built (nothing to do)"; fi
echo "$bin"
