#!/usr/bin/env bash
# Build the local plane's binaries from Go modules (no Docker, no release tarballs, no registry):
#   kube-apiserver kube-controller-manager kube-scheduler kubectl etcd   (wrapper module tools/k8s/go.mod)
#   kubelet kube-proxy                                                    (same wrapper module: the real node)
#   kwok helm containerd ctr containerd-shim-runc-v2                      (go install <module>@<version>)
#   coredns                                                               (module tools/k8s/coredns)
#   pause (static C, tools/k8s/node/pause.c)
# into ${FTO_K8S_CACHE:-$HOME/.cache/finetune-operator/k8s}/<versions>/bin, and the real node's images
#   images/pause.oci.tar    localhost/fto/pause:1     (the pinned sandbox image)
#   images/busybox.oci.tar  localhost/fto/busybox:1   (Debian's busybox-static: sh, wget, nslookup; for tests)
# beside it (OCI layout archives for `cluster.sh load-image`). Only what is missing (or, for the images,
# whose inputs changed) is built; the Go builds run in parallel.
#
# Usage: build.sh                 build what is missing; the last line printed is the bin dir
#        build.sh --print-bin-dir print the bin dir and exit (builds nothing)
#        build.sh --check         exit 0 if every binary and image is present, 1 otherwise (builds nothing)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

key="${K8S_VERSION}-etcd${ETCD_VERSION#v}-kwok${KWOK_VERSION#v}-helm${HELM_VERSION#v}"
key+="-containerd${CONTAINERD_VERSION#v}-coredns${COREDNS_VERSION#v}"
cache="${FTO_K8S_CACHE:-$HOME/.cache/finetune-operator/k8s}"
bin="$cache/$key/bin"
images="$cache/$key/images"
core=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kubelet kube-proxy)
containerd_bins=(containerd ctr containerd-shim-runc-v2)
all=("${core[@]}" kwok helm "${containerd_bins[@]}" coredns pause)
image_files=(pause.oci.tar busybox.oci.tar)

case "${1:-}" in
  --print-bin-dir) echo "$bin"; exit 0 ;;
  --check)
    for b in "${all[@]}"; do [[ -x "$bin/$b" ]] || { echo "missing: $bin/$b" >&2; exit 1; }; done
    for i in "${image_files[@]}"; do [[ -f "$images/$i" ]] || { echo "missing: $images/$i" >&2; exit 1; }; done
    exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--print-bin-dir|--check]" >&2; exit 2 ;;
esac

command -v go >/dev/null || { echo "build.sh: 'go' not found in PATH" >&2; exit 1; }
mkdir -p "$bin" "$images"
log() { echo "build.sh: $*" >&2; }
export CGO_ENABLED=0
t_all=$SECONDS
built=0
tmp="$(mktemp -d "$bin/.build.XXXXXX")"
jobs_pids=()
cleanup() {
  local p
  for p in "${jobs_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# -- the others, in the background while the wrapper module builds (each into its own dir, moved at the end)
bg() { # name command... : run in the background, output to $tmp/<name>.log
  local name=$1; shift
  ( "$@" ) >"$tmp/$name.log" 2>&1 &
  jobs_pids+=($!); jobs_names+=("$name")
}
jobs_names=()
gi() { # name module/cmd version [extra ldflags] (go install at a pinned version: their own tested go.mod)
  local name=$1 pkg=$2 ver=$3 extra=${4:-} t=$SECONDS
  mkdir -p "$tmp/$name"
  GOBIN="$tmp/$name" go install -trimpath -ldflags="-s -w $extra" "$pkg@$ver"
  mv "$tmp/$name/$name" "$bin/$name"
  echo "built $name in $((SECONDS - t))s"
}
build_containerd() {
  local t=$SECONDS b pkgs=() ld="-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
  for b in "${containerd_bins[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/$b@${CONTAINERD_VERSION}"); done
  mkdir -p "$tmp/containerd"
  GOBIN="$tmp/containerd" go install -trimpath -tags no_btrfs,no_devmapper,no_zfs -ldflags="$ld" "${pkgs[@]}"
  for b in "${containerd_bins[@]}"; do mv "$tmp/containerd/$b" "$bin/$b"; done
  echo "built ${containerd_bins[*]} in $((SECONDS - t))s"
}
build_coredns() {
  local t=$SECONDS
  grep -q "^require github.com/coredns/coredns ${COREDNS_VERSION}\$" "$here/coredns/go.mod" ||
    { echo "tools/k8s/coredns/go.mod does not pin coredns ${COREDNS_VERSION}; run tools/k8s/gen-gomod.sh"; return 1; }
  mkdir -p "$tmp/coredns"
  (cd "$here/coredns" && go build -mod=readonly -trimpath -ldflags="-s -w" -o "$tmp/coredns/coredns" .)
  mv "$tmp/coredns/coredns" "$bin/coredns"
  echo "built coredns in $((SECONDS - t))s"
}
missing_any() { local b; for b in "$@"; do [[ -x "$bin/$b" ]] || return 0; done; return 1; }

if missing_any kwok; then log "go install kwok@${KWOK_VERSION} (background)"; bg kwok gi kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"; fi
if missing_any helm; then
  log "go install helm@${HELM_VERSION} (background)"
  bg helm gi helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
fi
if missing_any "${containerd_bins[@]}"; then log "go install containerd@${CONTAINERD_VERSION} (background)"; bg containerd build_containerd; fi
if missing_any coredns; then log "building coredns ${COREDNS_VERSION} (background)"; bg coredns build_coredns; fi
((${#jobs_pids[@]})) && built=1

# -- pause: static C (a few seconds) ---------------------------------------------------------------
if [[ ! -x "$bin/pause" || "$here/node/pause.c" -nt "$bin/pause" ]]; then
  command -v gcc >/dev/null || { log "gcc not found (needed for the static pause binary): apt-get install gcc libc6-dev"; exit 1; }
  gcc -Os -static -o "$tmp/pause" "$here/node/pause.c"
  strip "$tmp/pause" 2>/dev/null || true
  mv "$tmp/pause" "$bin/pause"
  log "built pause"
  built=1
fi

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
  mkdir -p "$tmp/k8s"
  (cd "$here" && go build -mod=readonly -trimpath -ldflags="$ld" -o "$tmp/k8s/" "${pkgs[@]}")
  # go names the etcd binary after its module path (go.etcd.io/etcd/server/v3 -> "server")
  if [[ -f "$tmp/k8s/server" ]]; then mv "$tmp/k8s/server" "$tmp/k8s/etcd"; fi
  for b in "${missing[@]}"; do mv "$tmp/k8s/$b" "$bin/$b"; done
  log "built ${missing[*]} in $((SECONDS - t))s"
  built=1
fi

# -- wait for the background builds ------------------------------------------------------------------
failed=0
for i in "${!jobs_pids[@]}"; do
  if wait "${jobs_pids[$i]}"; then
    log "$(tail -n 1 "$tmp/${jobs_names[$i]}.log")"
  else
    log "building ${jobs_names[$i]} failed; its output:"; cat "$tmp/${jobs_names[$i]}.log" >&2; failed=1
  fi
done
jobs_pids=()
((failed)) && exit 1

# -- images for the real node: OCI layout archives, rebuilt when their inputs change ------------------
image_inputs() { # name -> a hash of what the image is made from (busybox: the recipe, not the .deb's version)
  case "$1" in
    pause) cat "$bin/pause" "$here/node/oci-image.sh" | sha256sum | cut -d' ' -f1 ;;
    busybox) { cat "$here/node/oci-image.sh"; sed -n '/^if ! image_fresh busybox/,/^fi$/p' "$here/build.sh"; } |
      sha256sum | cut -d' ' -f1 ;;
  esac
}
busybox_bin() { # path of a static busybox: Debian's busybox-static, installed or downloaded into $tmp
  local deb
  if [[ -x /bin/busybox ]] && dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
    echo /bin/busybox; return 0
  fi
  if [[ ! -x "$tmp/busybox-deb/bin/busybox" ]]; then
    mkdir -p "$tmp/busybox-deb"
    (cd "$tmp" && apt-get download busybox-static >/dev/null 2>&1) ||
      { log "busybox-static is not installed and could not be downloaded: apt-get install busybox-static"; return 1; }
    deb="$(ls "$tmp"/busybox-static_*.deb)"
    dpkg-deb -x "$deb" "$tmp/busybox-deb"
  fi
  echo "$tmp/busybox-deb/bin/busybox"
}
image_fresh() { [[ -f "$images/$1.oci.tar" && "$(cat "$images/$1.oci.tar.inputs" 2>/dev/null)" == "$(image_inputs "$1")" ]]; }
if ! image_fresh pause; then
  rm -rf "$tmp/rootfs-pause"; mkdir -p "$tmp/rootfs-pause"
  cp "$bin/pause" "$tmp/rootfs-pause/pause"
  "$here/node/oci-image.sh" localhost/fto/pause:1 "$tmp/rootfs-pause" "$images/pause.oci.tar" \
    --entrypoint '["/pause"]' --env '[]'
  image_inputs pause >"$images/pause.oci.tar.inputs"
  built=1
fi
if ! image_fresh busybox; then
  bb="$(busybox_bin)"
  r="$tmp/rootfs-busybox"; rm -rf "$r"; mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root" "$r/home"
  cp "$bb" "$r/bin/busybox"
  # one symlink per applet, at the path busybox gives for it (bin/sh, usr/bin/wget, ...)
  while read -r p; do
    [[ "$p" == bin/busybox || -e "$r/$p" ]] && continue
    mkdir -p "$r/$(dirname "$p")"; ln -s /bin/busybox "$r/$p"
  done < <("$bb" --list-full)
  chmod 1777 "$r/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  "$here/node/oci-image.sh" localhost/fto/busybox:1 "$r" "$images/busybox.oci.tar" --cmd '["sh"]'
  image_inputs busybox >"$images/busybox.oci.tar.inputs"
  built=1
fi

if ((built)); then log "all binaries ready in $((SECONDS - t_all))s"; else log "all binaries already built (nothing to do)"; fi
echo "$bin"
