#!/usr/bin/env bash
# Builds the Dockerfile's two targets on this machine without a container registry, and exports each as an OCI
# archive that `tools/k8s/cluster.sh load-image ARCHIVE...` imports into the node's containerd.
#
#   tools/images/build.sh [operator|trainer|all]   build what is missing or stale (default all); the last lines on
#                                                   stdout are the archives' paths, one per target
#   tools/images/build.sh --print [TARGET...]      the refs and archives it would build, and which exist already
#   tools/images/build.sh --print-refs             OPERATOR_IMAGE= OPERATOR_ARCHIVE= TRAINER_IMAGE= TRAINER_ARCHIVE=
#                                                   BASE_IMAGE= (sourceable), computed from this checkout, no build
#   tools/images/build.sh --clean                  remove the archives, the base and the localhost/finetune-* images
#
# How (docs/control-plane.md, "Images"):
# - base: a Debian bookworm rootfs from debootstrap (python3, python3-venv, ca-certificates), from this machine's
#   Debian mirror, imported into buildah's storage as localhost/finetune-base:<suite>-<hash>; it is the
#   Dockerfile's PYTHON_IMAGE. Its tarball is kept in the cache.
# - buildah bud --layers --network host: this machine's pip configuration (`pip config list`, PIP_* variables)
#   and its CA bundle go in as build secrets, local find-links folders as read-only volumes, and the Dockerfile's
#   pip cache mount (id=pip) is this machine's pip cache.
# - export: skopeo copies the image (zstd layers) to an OCI layout whose index carries io.containerd.image.name
#   (what `ctr images import` names the image by), then tar.
# Tags: <version>-<12 hex of sha256 over the Dockerfile, .dockerignore, the files it copies, the base, the target,
# its build args and this script's build and export steps>: any change is a new tag, so a stale image is never
# reused. The newest FTO_IMAGES_KEEP archives (default 1) per image are kept, older ones removed.
#
# Environment: FTO_IMAGES_CACHE (default ~/.cache/finetune-operator/images), FTO_TRAINER_VARIANT (cuda|cpu, the
# Dockerfile's VARIANT; default cuda), FTO_TORCH_INDEX_URL (its TORCH_INDEX_URL), FTO_DEBIAN_MIRROR (default: this
# machine's apt source for the suite, else http://deb.debian.org/debian).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${FTO_IMAGES_CACHE:-$HOME/.cache/finetune-operator/images}"
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates   # useradd/groupadd (passwd) are in minbase
VARIANT="${FTO_TRAINER_VARIANT:-cuda}"
TORCH_INDEX_URL="${FTO_TORCH_INDEX_URL:-}"
KEEP="${FTO_IMAGES_KEEP:-1}"  # archives kept per image (the trainer's is 3 GiB)
# What the Dockerfile copies (keep in step with .dockerignore): these files decide the tags.
CONTEXT=(Dockerfile .dockerignore pyproject.toml LICENSE README.md tools/install.sh operator trainer_image)

TEMPS=()  # work folders removed on exit, whatever the exit (never across a mount a failed debootstrap left)
cleanup() {
  local t m
  for t in "${TEMPS[@]}"; do
    for m in $(awk -v t="$t/" 'index($2, t) == 1 { print $2 }' /proc/mounts | sort -r); do umount -l "$m" || true; done
    rm -rf --one-file-system "$t"
  done
}
trap cleanup EXIT

log() { printf '%s images: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ------------------------------------------------------------------------------------------------ names

version() { sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1; }

hash12() { sha256sum | cut -c1-12; }

context_hash() {
  (cd "$ROOT" && find "${CONTEXT[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' \
      -printf '%m %p\n' | LC_ALL=C sort | while read -r mode path; do
        printf '%s %s %s\n' "$mode" "$path" "$(sha256sum <"$path" | cut -c1-64)"; done) | sha256sum | cut -c1-64
}

base_ref() {
  echo "localhost/finetune-base:$SUITE-$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" "$(declare -f make_base)" | hash12)"
}

target_args() {  # the build args of a target, one per line (part of its tag)
  echo "PYTHON_IMAGE=$BASE_REF"
  if [ "$1" = trainer ]; then echo "VARIANT=$VARIANT"; echo "TORCH_INDEX_URL=$TORCH_INDEX_URL"; fi
}

target_ref() {
  local target=$1 suffix=""
  [ "$target" = trainer ] && [ "$VARIANT" != cuda ] && suffix="-$VARIANT"
  local h steps
  steps=$(declare -f build_image export_archive)
  h=$(printf '%s\n' "$CONTEXT_HASH" "$target" "$(target_args "$target")" "$steps" | hash12)
  echo "localhost/finetune-$target:$(version)$suffix-$h"
}

archive_of() { local ref=$1 repo=${1%:*}; echo "$CACHE/${repo##*/}-${ref##*:}.oci.tar"; }

# ------------------------------------------------------------------------------------------------ tools

need_tools() {  # apt-get installs what is missing (CI's fresh machine), as .ci/run does for make
  local missing=()
  for pair in buildah:buildah skopeo:skopeo debootstrap:debootstrap runc:runc; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "missing ${missing[*]} (apt-get install ${missing[*]})"
  log "installing ${missing[*]} (apt-get)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

debian_mirror() {  # this machine's apt source for $SUITE (one-line or deb822 format)
  if [ -n "${FTO_DEBIAN_MIRROR:-}" ]; then echo "$FTO_DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk -v s="$SUITE" '
    $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { if ($(i + 1) == s) { print $i; exit } break } }')
  [ -n "$m" ] || m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$SUITE" 'BEGIN { RS = "" }
    { u = ""; ok = 0; n = split($0, line, "\n")
      for (i = 1; i <= n; i++) {
        if (line[i] ~ /^URIs:/) { split(line[i], a, " "); u = a[2] }
        if (line[i] ~ /^Suites:/) { k = split(line[i], b, " "); for (j = 2; j <= k; j++) if (b[j] == s) ok = 1 }
      }
      if (ok && u ~ /^https?:\/\//) { print u; exit } }')
  echo "${m:-http://deb.debian.org/debian}"
}

# ------------------------------------------------------------------------------------------------ base

make_base() {  # debootstrap a minimal rootfs with Python 3.11 into the tarball $1
  local out=$1 tmp mirror
  tmp=$(mktemp -d "$CACHE/.base.XXXXXX"); TEMPS+=("$tmp")
  mirror=$(debian_mirror)
  log "base: debootstrap $SUITE from $mirror"
  if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$tmp/rootfs" "$mirror" \
      >"$tmp/debootstrap.log" 2>&1; then
    tail -30 "$tmp/debootstrap.log" >&2; die "debootstrap failed"
  fi
  # What a container image does without: package lists and caches, docs, logs, and the host's resolver/hostname.
  (cd "$tmp/rootfs" && rm -rf var/cache/apt/* var/lib/apt/lists/* var/log/* usr/share/doc/* usr/share/man/* \
      usr/share/info/* usr/share/locale/* etc/resolv.conf etc/hostname)
  chroot "$tmp/rootfs" python3 -c 'import ensurepip, ssl, venv' || die "base: python3 in the rootfs is incomplete"
  tar --numeric-owner -C "$tmp/rootfs" -cf "$tmp/base.tar" .
  mv "$tmp/base.tar" "$out"
}

ensure_base() {
  buildah inspect --type image "$BASE_REF" >/dev/null 2>&1 && return
  local tarball="$CACHE/base-${BASE_REF##*:}.tar" c
  [ -s "$tarball" ] || make_base "$tarball"
  c=$(buildah from scratch)
  buildah add --quiet "$c" "$tarball" / >/dev/null
  buildah config --env LANG=C.UTF-8 --cmd '["python3"]' "$c"
  buildah commit --quiet --rm "$c" "$BASE_REF" >/dev/null
  log "base: $BASE_REF ($(du -m "$tarball" | cut -f1) MiB)"
  local other  # earlier bases (another package list or make_base): their tarballs and tags
  for other in "$CACHE"/base-*.tar; do [ "$other" = "$tarball" ] || rm -f "$other"; done
  for other in $(buildah images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep '^localhost/finetune-base:'); do
    [ "$other" = "$BASE_REF" ] || buildah rmi "$other" >/dev/null 2>&1 || true
  done
}

# ------------------------------------------------------------------------------------------------ pip

pip_settings() {  # $1: a private folder. Writes pip.conf (+ pip-ca.crt) there; prints buildah arguments, one a line.
  python3 - "$1" <<'EOF'
import ast, configparser, os, re, shutil, subprocess, sys
out = sys.argv[1]
try:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
except (OSError, subprocess.CalledProcessError):
    listing = ""  # no pip here: PIP_* variables only
    listing += "".join(f":env:.{k[4:].lower().replace('_', '-')}={v!r}\n" for k, v in os.environ.items()
                       if k.startswith("PIP_"))
sections: dict[str, dict[str, str]] = {}
env: dict[str, str] = {}
for line in listing.splitlines():
    m = re.match(r"^(:env:|[^.=]+)\.([^=]+)=(.*)$", line)
    if not m:
        continue
    section, key, value = m.group(1), m.group(2), ast.literal_eval(m.group(3))
    (env if section == ":env:" else sections.setdefault(section, {}))[key] = value
sections.setdefault("global", {}).update(env)  # variables beat files
# Settings about this machine's own install locations do not travel into the image.
drop = {"cache-dir", "no-cache-dir", "log", "log-file", "target", "prefix", "root", "user", "src", "build-dir",
        "require-virtualenv", "require-venv", "break-system-packages", "config-file", "isolated", "client-cert"}
args = []
glob = sections["global"]
cert = glob.get("cert") or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
for section in sections.values():
    for key in list(section):
        if key in drop:
            if key == "client-cert":
                print(f"images: warning: pip's client-cert is not passed into the build", file=sys.stderr)
            del section[key]
        elif key == "cert":
            del section[key]
        elif key == "find-links":
            kept = []
            for link in section[key].split():
                path = link[7:] if link.startswith("file://") else link
                if "://" not in path:  # a local folder: mounted read-only at the same path, if it has anything
                    if os.path.isdir(path) and os.listdir(path):
                        args.append(f"--volume={os.path.abspath(path)}:{os.path.abspath(path)}:ro")
                    else:
                        continue
                kept.append(link)
            if kept:
                section[key] = "\n".join(kept)
            else:
                del section[key]
if cert and os.path.isfile(cert):
    shutil.copyfile(cert, os.path.join(out, "pip-ca.crt"))
    glob["cert"] = "/run/secrets/pip-ca.crt"
    args.append(f"--secret=id=pip-ca,src={os.path.join(out, 'pip-ca.crt')}")
parser = configparser.ConfigParser(interpolation=None)
for name, values in sections.items():
    if values:
        parser[name] = values
with open(os.path.join(out, "pip.conf"), "w") as f:
    parser.write(f)
args.append(f"--secret=id=pip.conf,src={os.path.join(out, 'pip.conf')}")
print("\n".join(args))
EOF
}

pip_cache_dir() {  # this machine's pip cache, or nothing when pip's cache is off
  python3 -m pip cache dir 2>/dev/null && return
  [ -z "${PIP_NO_CACHE_DIR:-}" ] && echo "${PIP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pip}"
}

# ------------------------------------------------------------------------------------------------ build, export

build_image() {  # $1 target, $2 ref
  local target=$1 ref=$2 pipdir buildtmp cachedir arg
  local args=(--layers --network host --pull=never --target "$target" -f "$ROOT/Dockerfile" -t "$ref")
  while read -r arg; do args+=(--build-arg "$arg"); done < <(target_args "$target")
  pipdir=$(mktemp -d "$CACHE/.pip.XXXXXX"); TEMPS+=("$pipdir")
  while read -r arg; do [ -n "$arg" ] && args+=("$arg"); done < <(pip_settings "$pipdir")
  # buildah keeps cache mounts in $TMPDIR/buildah-cache[-UID]/<id>: id=pip is pointed at this machine's pip cache.
  buildtmp="$CACHE/tmp"
  mkdir -p "$buildtmp/buildah-cache" "$buildtmp/buildah-cache-$(id -u)"
  cachedir=$(pip_cache_dir || true)
  for d in "$buildtmp/buildah-cache" "$buildtmp/buildah-cache-$(id -u)"; do
    if [ -n "$cachedir" ]; then mkdir -p "$cachedir"; ln -sfn "$cachedir" "$d/pip"; else rm -f "$d/pip"; fi
  done
  log "$target: buildah bud -> $ref"
  if ! TMPDIR="$buildtmp" buildah bud "${args[@]}" "$ROOT" >"$CACHE/build-$target.log" 2>&1; then
    tail -40 "$CACHE/build-$target.log" >&2
    die "$target: build failed (log: $CACHE/build-$target.log)"
  fi
}

export_archive() {  # $1 ref, $2 archive: an OCI layout (uncompressed layers) named for containerd, as one tar
  local ref=$1 archive=$2 tmp
  tmp=$(mktemp -d "$CACHE/.export.XXXXXX"); TEMPS+=("$tmp")
  # zstd (level 1): measured here on the trainer (6.3 GiB), export + containerd 2.4 import took about 70 + 85 s
  # against 60 + 140 s with uncompressed layers (twice the bytes to write: disk, not CPU, is the limit) and
  # 80 + 130 s with gzip; 3.1 GiB on disk instead of 6.3.
  if ! TMPDIR="$CACHE/tmp" skopeo copy --quiet --dest-compress-format zstd --dest-compress-level 1 \
      "containers-storage:$ref" "oci:$tmp/layout:$ref" >"$tmp/skopeo.log" 2>&1; then
    cat "$tmp/skopeo.log" >&2; die "export of $ref failed"
  fi
  python3 - "$tmp/layout/index.json" "$ref" <<'EOF'
import json, sys
path, ref = sys.argv[1:]
with open(path) as f:
    index = json.load(f)
for manifest in index["manifests"]:
    manifest.setdefault("annotations", {}).update({"io.containerd.image.name": ref,
                                                   "org.opencontainers.image.ref.name": ref})
with open(path, "w") as f:
    json.dump(index, f)
EOF
  tar --numeric-owner --owner=0 --group=0 -C "$tmp/layout" -cf "$tmp/archive.tar" oci-layout index.json blobs
  mv "$tmp/archive.tar" "$archive"
}

prune() {  # keep the newest $KEEP archives of the image $1; drop the others' tags and layers from buildah's storage
  local repo=$1 name=${1##*/} old tag removed=0
  # shellcheck disable=SC2012
  for old in $(ls -t "$CACHE/$name"-*.oci.tar 2>/dev/null | tail -n +"$((KEEP + 1))"); do
    tag=${old##*/$name-}; tag=${tag%.oci.tar}
    rm -f "$old"
    buildah rmi "$repo:$tag" >/dev/null 2>&1 || true
    log "removed the stale $repo:$tag"
    removed=1
  done
  # The layers only those images used (untagged intermediate images); the current chains stay cached.
  [ "$removed" = 0 ] || buildah rmi --prune >/dev/null 2>&1 || true
}

build_target() {  # $1 target: build (or reuse) and export; prints nothing on stdout
  local target=$1 ref archive t0 t1
  ref=$(target_ref "$target"); archive=$(archive_of "$ref")
  if [ -s "$archive" ]; then log "$target: $ref is built ($archive)"; prune "${ref%:*}"; return; fi
  need_tools
  ensure_base
  t0=$SECONDS
  if buildah inspect --type image "$ref" >/dev/null 2>&1; then log "$target: $ref in buildah's storage"
  else build_image "$target" "$ref"; fi
  t1=$SECONDS
  export_archive "$ref" "$archive"
  log "$target: built in $((t1 - t0)) s, exported in $((SECONDS - t1)) s: $archive ($(du -m "$archive" | cut -f1) MiB)"
  prune "${ref%:*}"
}

# ------------------------------------------------------------------------------------------------ main

mode=build targets=()
for arg in "$@"; do
  case "$arg" in
    --print) mode=print ;;
    --print-refs) mode=refs ;;
    --clean) mode=clean ;;
    -h|--help) usage ;;
    operator|trainer) targets+=("$arg") ;;
    all) targets+=(operator trainer) ;;
    *) usage ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(operator trainer)
case "$VARIANT" in cuda|cpu) ;; *) die "FTO_TRAINER_VARIANT must be cuda or cpu, not $VARIANT" ;; esac

mkdir -p "$CACHE"
CONTEXT_HASH=$(context_hash)
BASE_REF=$(base_ref)

case "$mode" in
  refs)
    for target in operator trainer; do
      ref=$(target_ref "$target"); upper=$(tr a-z A-Z <<<"$target")
      echo "${upper}_IMAGE=$ref"; echo "${upper}_ARCHIVE=$(archive_of "$ref")"
    done
    echo "BASE_IMAGE=$BASE_REF" ;;
  print)
    for target in "${targets[@]}"; do
      ref=$(target_ref "$target"); archive=$(archive_of "$ref")
      state=missing; [ -s "$archive" ] && state=built
      printf '%-8s %s %s %s\n' "$target" "$ref" "$archive" "$state"
    done ;;
  clean)
    exec 9>"$CACHE/.lock"; flock 9
    rm -f "$CACHE"/*.oci.tar "$CACHE"/base-*.tar "$CACHE"/build-*.log
    buildah images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep '^localhost/finetune-' \
      | xargs -r buildah rmi >/dev/null || true
    log "removed the archives and the localhost/finetune-* images (buildah's layer cache: buildah rmi --prune)" ;;
  build)
    exec 9>"$CACHE/.lock"; flock 9  # one build at a time per machine (several test sessions may ask at once)
    for target in "${targets[@]}"; do build_target "$target"; done
    for target in "${targets[@]}"; do archive_of "$(target_ref "$target")"; done ;;
esac
