#!/usr/bin/env bash
# The Debian packages the project's builds and tests use, installed when missing (CI's machine may be new).
# `make test` and .ci/run call it; on a machine where they are all present it does nothing (no apt-get at all).
#
#   make, gcc, libc6-dev        the Makefile; the static pause binary of the real node (tools/k8s/node/pause.c)
#   openssl, curl, jq           the plane's certificates and health checks; OCI image indexes (tools/k8s/node)
#   runc, containernetworking-plugins, iptables, iproute2, util-linux, busybox-static
#                               the real node: container runtime, pod network, kube-proxy, the node's test image
#   buildah, skopeo, debootstrap  the images from the Dockerfile (tools/images/build.sh)
set -euo pipefail
packages=(make gcc libc6-dev openssl curl jq runc containernetworking-plugins iptables iproute2 util-linux
          busybox-static buildah skopeo debootstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
  echo "install-system.sh: missing Debian packages: ${missing[*]} (run as root: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install-system.sh: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
