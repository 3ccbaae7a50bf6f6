#!/usr/bin/env bash
# Package a directory as a single-layer OCI image archive (OCI layout in a tar), without a registry or a
# container builder: what `ctr images import` (tools/k8s/cluster.sh load-image) reads.
#
# Usage: oci-image.sh REF ROOTFS_DIR OUT_TAR [--entrypoint JSON_ARRAY] [--cmd JSON_ARRAY] [--env JSON_ARRAY]
#   REF       image name, e.g. localhost/fto/pause:1 (stored as the io.containerd.image.name annotation)
#   ROOTFS    directory whose contents become the image's root filesystem (owner root:root, mtime 0)
# The archive is reproducible: the same inputs give the same digests, so a re-import is a no-op.
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 REF ROOTFS_DIR OUT_TAR [--entrypoint JSON] [--cmd JSON] [--env JSON]" >&2; exit 2; }
ref=$1 rootfs=$2 out=$3; shift 3
entrypoint=null cmd=null env='["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
while (($#)); do
  case "$1" in
    --entrypoint) entrypoint=$2; shift 2 ;;
    --cmd) cmd=$2; shift 2 ;;
    --env) env=$2; shift 2 ;;
    *) echo "oci-image.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
command -v jq >/dev/null || { echo "oci-image.sh: jq not found" >&2; exit 1; }
[[ -d "$rootfs" ]] || { echo "oci-image.sh: $rootfs is not a directory" >&2; exit 1; }
tag="${ref##*/}"; [[ $tag == *:* ]] && tag="${tag##*:}" || tag=latest

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"
put() { # file -> prints "<digest-hex> <size>" and moves the file into blobs/
  local d s
  d="$(sha256sum "$1" | cut -d' ' -f1)"; s="$(stat -c %s "$1")"
  mv "$1" "$work/blobs/sha256/$d"
  echo "$d $s"
}

tar -C "$rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf "$work/layer.tar" .
read -r layer layer_size < <(put "$work/layer.tar")

jq -cn --arg diff "sha256:$layer" --argjson ep "$entrypoint" --argjson cmd "$cmd" --argjson env "$env" '{
  architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z",
  config: ({Env: $env} + (if $ep then {Entrypoint: $ep} else {} end) + (if $cmd then {Cmd: $cmd} else {} end)),
  rootfs: {type: "layers", diff_ids: [$diff]},
  history: [{created: "1970-01-01T00:00:00Z", created_by: "tools/k8s/node/oci-image.sh"}]
}' >"$work/config.json"
read -r config config_size < <(put "$work/config.json")

jq -cn --arg c "sha256:$config" --argjson cs "$config_size" --arg l "sha256:$layer" --argjson ls "$layer_size" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $l, size: $ls}]
}' >"$work/manifest.json"
read -r manifest manifest_size < <(put "$work/manifest.json")

jq -cn --arg m "sha256:$manifest" --argjson ms "$manifest_size" --arg ref "$ref" --arg tag "$tag" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
    platform: {architecture: "amd64", os: "linux"},
    annotations: {"io.containerd.image.name": $ref, "org.opencontainers.image.ref.name": $tag}}]
}' >"$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"

mkdir -p "$(dirname "$out")"
tar -C "$work" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
echo "oci-image.sh: $ref -> $out (manifest sha256:$manifest)" >&2
