#!/usr/bin/env bash
# Local Kubernetes control plane for finetune-operator tests: etcd + kube-apiserver +
# kube-controller-manager + kube-scheduler + KWOK (simulated nodes and pod lifecycle), all as plain
# processes on 127.0.0.1, built by tools/k8s/build.sh.
#
# Usage: cluster.sh [--state DIR] up [--fresh] | down [--keep-data] | status | env | purge
#
#   up       start the plane (idempotent: does nothing if it is already up and healthy) and wait until
#            /readyz is ok, the KWOK nodes are Ready and the default ServiceAccount exists.
#            --fresh: wipe the cluster data (etcd) first.
#   down     stop the processes this script started (PIDs in <state>/pids/ only). The cluster data
#            (etcd) is wiped unless --keep-data, so the next `up` starts from an empty cluster; the
#            certificates are kept.
#   status   print each component's state (pid, RSS, health); exit 0 only if everything is up.
#   env      print `export KUBECONFIG=...` and `export PATH=<bin dir>:$PATH` (eval "$(cluster.sh env)").
#   purge    down, then delete the whole state directory.
#
# Environment: FTO_K8S_STATE (state dir, default ~/.local/state/finetune-operator/plane),
#              FTO_K8S_BIN (bin dir; default: what tools/k8s/build.sh --print-bin-dir says),
#              FTO_K8S_NODES (number of KWOK nodes, default 2), FTO_K8S_UP_TIMEOUT (seconds, default 120).
#
# Layout of the state dir: kubeconfig (admin, certs embedded), pki/, etcd/ (data), logs/<component>.log,
# pids/<component>.pid, ports.env, *.kubeconfig (per component).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${FTO_K8S_STATE:-$HOME/.local/state/finetune-operator/plane}"

if [[ "${1:-}" == "--state" ]]; then
  [[ $# -ge 2 ]] || { echo "cluster.sh: --state needs a directory" >&2; exit 2; }
  state="$2"; shift 2
fi
cmd="${1:-}"; shift || true

mkdir -p "$state"
state="$(cd "$state" && pwd)"
pki="$state/pki"; logs="$state/logs"; pids="$state/pids"
kubeconfig="$state/kubeconfig"
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
nodes="${FTO_K8S_NODES:-2}"
up_timeout="${FTO_K8S_UP_TIMEOUT:-120}"

log() { echo "cluster.sh: $*" >&2; }
die() { echo "cluster.sh: error: $*" >&2; exit 1; }

bin_dir() {
  if [[ -n "${FTO_K8S_BIN:-}" ]]; then echo "$FTO_K8S_BIN"; else "$here/build.sh" --print-bin-dir; fi
}
bin="$(bin_dir)"

# ------------------------------------------------------------------------------ processes
pid_of() { # component -> pid if that process is alive and is ours (its command line names the state dir)
  local f="$pids/$1.pid" p
  [[ -f "$f" ]] || return 1
  p="$(cat "$f")"
  [[ "$p" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$p" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$state" || return 1
  echo "$p"
}

start() { # component args...
  local c=$1; shift
  [[ -x "$bin/$c" ]] || die "$bin/$c is missing; build it first with tools/k8s/build.sh"
  mkdir -p "$logs" "$pids"
  # setsid: own session, so the plane outlives the shell / pytest process that started it and a
  # Ctrl-C in the terminal does not reach it. `down` stops it by PID.
  setsid "$bin/$c" "$@" >>"$logs/$c.log" 2>&1 </dev/null 9>&- &
  echo $! >"$pids/$c.pid"
}

stop_all() {
  local c p i alive
  local -a mine=()
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do # reverse order: kwok ... etcd
    c="${components[$i]}"
    if p="$(pid_of "$c")"; then kill -TERM "$p" 2>/dev/null || true; mine+=("$p"); log "stopping $c (pid $p)"; fi
    rm -f "$pids/$c.pid"
  done
  for ((i = 0; i < 100; i++)); do
    alive=0
    for p in "${mine[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  for p in "${mine[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}

rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# ------------------------------------------------------------------------------ ports
port_free() { # port -> 0 if nothing listens on 127.0.0.1:port
  if command -v ss >/dev/null; then
    ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
  else
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
pick_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 30000))
    port_free "$p" && { echo "$p"; return 0; }
  done
  die "no free port found"
}
ensure_ports() { # keep the previous ports when they are still free (stable kubeconfig), else pick new ones
  local ok=1 v
  if [[ -f "$state/ports.env" ]]; then
    # shellcheck disable=SC1091
    . "$state/ports.env"
    for v in ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHED_PORT KWOK_PORT; do
      [[ -n "${!v:-}" ]] && port_free "${!v}" || ok=0
    done
  else
    ok=0
  fi
  if ((!ok)); then
    ETCD_PORT=$(pick_port); ETCD_PEER_PORT=$(pick_port); APISERVER_PORT=$(pick_port)
    KCM_PORT=$(pick_port); SCHED_PORT=$(pick_port); KWOK_PORT=$(pick_port)
    cat >"$state/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
SCHED_PORT=$SCHED_PORT
KWOK_PORT=$KWOK_PORT
EOF
  fi
}
load_ports() { [[ -f "$state/ports.env" ]] && . "$state/ports.env"; }

# ------------------------------------------------------------------------------ pki
gen_pki() { # each file is created only if missing, so adding a certificate here upgrades old state dirs
  command -v openssl >/dev/null || die "openssl not found (needed to create the cluster certificates)"
  mkdir -p "$pki"
  (
    cd "$pki"
    umask 077
    local o=(-sha256 -days 3650)
    if [[ ! -f ca.crt || ! -f ca.key ]]; then
      log "generating the cluster CA in $pki"
      rm -f ./*.crt ./*.key
      openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt "${o[@]}" \
        -subj "/CN=finetune-operator-test-ca" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    fi
    cert() { # name subject [server SANs]
      local name=$1 subj=$2 san=${3:-} ext
      [[ -f "$name.crt" && -f "$name.key" ]] && return 0
      log "generating certificate $name ($subj)"
      ext="$(mktemp)"
      {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [[ -n "$san" ]]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san"
        else echo "extendedKeyUsage=clientAuth"; fi
      } >"$ext"
      openssl req -new -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
      openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" \
        "${o[@]}" -extfile "$ext" 2>/dev/null
      rm -f "$name.csr" "$ext"
    }
    cert apiserver "/CN=kube-apiserver" \
      "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1"
    cert admin "/O=system:masters/CN=kubernetes-admin"
    cert kube-controller-manager "/CN=system:kube-controller-manager"
    cert kube-scheduler "/CN=system:kube-scheduler"
    cert kwok "/O=system:masters/CN=kwok-controller"
    cert front-proxy-client "/CN=front-proxy-client"
    if [[ ! -f sa.key || ! -f sa.pub ]]; then
      log "generating the service-account signing key"
      openssl genrsa -out sa.key 2048 2>/dev/null
      openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    fi
  )
}

b64() { base64 -w0 <"$1"; }
write_kubeconfig() { # path user cert-basename
  local tmp
  tmp="$(mktemp "$1.XXXXXX")"
  cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: finetune-test
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$pki/$3.crt")
    client-key-data: $(b64 "$pki/$3.key")
contexts:
- name: finetune-test
  context:
    cluster: finetune-test
    user: $2
    namespace: default
current-context: finetune-test
EOF
  chmod 600 "$tmp"
  mv "$tmp" "$1"
}

# ------------------------------------------------------------------------------ health
https_ok() { # port path [cert]
  local c=${3:-admin}
  curl -fsS --max-time 2 --cacert "$pki/ca.crt" --cert "$pki/$c.crt" --key "$pki/$c.key" \
    "https://127.0.0.1:$1$2" >/dev/null 2>&1
}
insecure_ok() { curl -fskS --max-time 2 "https://127.0.0.1:$1$2" >/dev/null 2>&1; }
http_ok() { curl -fsS --max-time 2 "http://127.0.0.1:$1$2" >/dev/null 2>&1; }

health() { # component -> 0 if healthy
  load_ports || return 1
  case "$1" in
    etcd) http_ok "$ETCD_PORT" /health ;;
    kube-apiserver) https_ok "$APISERVER_PORT" /readyz ;;
    kube-controller-manager) insecure_ok "$KCM_PORT" /healthz ;;
    kube-scheduler) insecure_ok "$SCHED_PORT" /healthz ;;
    kwok) http_ok "$KWOK_PORT" /healthz ;;
  esac
}

all_healthy() {
  local c
  for c in "${components[@]}"; do pid_of "$c" >/dev/null && health "$c" || return 1; done
}

wait_for() { # description timeout command...
  local what=$1 t=$2 start=$SECONDS; shift 2
  until "$@"; do
    if ((SECONDS - start >= t)); then return 1; fi
    sleep 0.25
  done
  log "$what ($((SECONDS - start))s)"
}

kc() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

fail_up() { # component
  log "$1 did not become ready; last lines of $logs/$1.log:"
  tail -n 30 "$logs/$1.log" >&2 || true
  stop_all
  exit 1
}

# ------------------------------------------------------------------------------ commands
cmd_up() {
  local fresh=0
  [[ "${1:-}" == "--fresh" ]] && fresh=1
  local t0=$SECONDS
  command -v curl >/dev/null || die "curl not found"
  local c
  for c in "${components[@]}" kubectl; do
    [[ -x "$bin/$c" ]] || die "$bin/$c is missing; build the binaries first: tools/k8s/build.sh"
  done
  if ((!fresh)) && all_healthy; then
    log "already up (state $state)"
    return 0
  fi
  # Anything half-running from a previous attempt is stopped first.
  stop_all
  if ((fresh)); then rm -rf "$state/etcd"; fi
  gen_pki
  ensure_ports
  mkdir -p "$logs" "$pids"
  : >"$logs/up.log"
  write_kubeconfig "$kubeconfig" kubernetes-admin admin
  write_kubeconfig "$state/kube-controller-manager.kubeconfig" system:kube-controller-manager kube-controller-manager
  write_kubeconfig "$state/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
  write_kubeconfig "$state/kwok.kubeconfig" kwok-controller kwok

  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  start etcd --name=node0 --data-dir="$state/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="node0=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true --quota-backend-bytes=4294967296 --log-level=warn
  wait_for "etcd healthy" 30 health etcd || fail_up etcd

  log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
  start kube-apiserver \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
    --endpoint-reconciler-type=none \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --requestheader-client-ca-file="$pki/ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" --proxy-client-key-file="$pki/front-proxy-client.key" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction,PodSecurity \
    --allow-privileged=true \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --profiling=false
  wait_for "kube-apiserver ready" 90 health kube-apiserver || fail_up kube-apiserver

  log "starting kube-controller-manager, kube-scheduler, kwok"
  start kube-controller-manager \
    --kubeconfig="$state/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$state/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$state/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
    --leader-elect=false --controllers='*' --use-service-account-credentials=true \
    --root-ca-file="$pki/ca.crt" --service-account-private-key-file="$pki/sa.key" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --kube-api-qps=200 --kube-api-burst=400 --profiling=false
  start kube-scheduler \
    --kubeconfig="$state/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$state/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$state/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --leader-elect=false --kube-api-qps=200 --kube-api-burst=400 --profiling=false
  start kwok \
    --kubeconfig="$state/kwok.kubeconfig" \
    --config="$here/kwok/stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --server-address="127.0.0.1:$KWOK_PORT" \
    --cidr=10.244.0.1/16 --node-ip=10.0.0.1 \
    --node-lease-duration-seconds=40

  register_nodes

  wait_for "kube-controller-manager healthy" 60 health kube-controller-manager || fail_up kube-controller-manager
  wait_for "kube-scheduler healthy" 60 health kube-scheduler || fail_up kube-scheduler
  wait_for "kwok healthy" 60 health kwok || fail_up kwok
  wait_for "nodes Ready" 60 nodes_ready || fail_up kwok
  wait_for "default ServiceAccount exists" 60 default_sa_exists || fail_up kube-controller-manager
  log "up in $((SECONDS - t0))s: export KUBECONFIG=$kubeconfig"
}

default_sa_exists() { kc get serviceaccount default -n default -o name >/dev/null 2>&1; }

nodes_ready() {
  local n
  n="$(kc get nodes -l type=kwok -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c '^True$' || true)"
  [[ "$n" -ge "$nodes" ]]
}

register_nodes() {
  local i name manifest=""
  for ((i = 0; i < nodes; i++)); do
    name="kwok-node-$i"
    manifest+="---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    node-role.kubernetes.io/agent: \"\"
    nvidia.com/gpu.present: \"true\"
status:
  allocatable: {cpu: \"32\", memory: 256Gi, pods: \"110\", ephemeral-storage: 1Ti, nvidia.com/gpu: \"8\"}
  capacity: {cpu: \"32\", memory: 256Gi, pods: \"110\", ephemeral-storage: 1Ti, nvidia.com/gpu: \"8\"}
"
  done
  # create (not apply): the node status is only settable on create; existing nodes are kept.
  printf '%s' "$manifest" | kc create -f - 2>&1 | grep -v AlreadyExists >&2 || true
}

cmd_down() {
  local keep=0
  [[ "${1:-}" == "--keep-data" ]] && keep=1
  stop_all
  if ((!keep)); then rm -rf "$state/etcd"; fi
  log "down (state $state$( ((keep)) && echo ', data kept'))"
}

cmd_status() {
  local c p ok=0 total=0 r h
  load_ports || true
  printf '%-24s %-8s %-10s %s\n' COMPONENT PID RSS_MiB HEALTH
  for c in "${components[@]}"; do
    if p="$(pid_of "$c")"; then
      r="$(rss_kib "$p")"; total=$((total + r))
      if health "$c"; then h=ok; else h=unhealthy; ok=1; fi
      printf '%-24s %-8s %-10s %s\n' "$c" "$p" "$((r / 1024))" "$h"
    else
      printf '%-24s %-8s %-10s %s\n' "$c" - - stopped
      ok=1
    fi
  done
  printf '%-24s %-8s %-10s\n' total "" "$((total / 1024))"
  echo "state: $state"
  echo "kubeconfig: $kubeconfig"
  [[ -n "${APISERVER_PORT:-}" ]] && echo "apiserver: https://127.0.0.1:$APISERVER_PORT"
  if ((ok == 0)); then kc get nodes 2>/dev/null || true; fi
  return $ok
}

cmd_env() {
  echo "export KUBECONFIG=$kubeconfig"
  echo "export PATH=$bin:\$PATH"
}

# up/down/purge are serialized, so concurrent test sessions sharing the state dir do not race.
lock() {
  command -v flock >/dev/null || return 0
  exec 9>"$state/.lock"
  flock -w 600 9 || die "timed out waiting for the lock on $state/.lock"
}

case "$cmd" in
  up) lock; cmd_up "$@" ;;
  down) lock; cmd_down "$@" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  purge) lock; stop_all; rm -rf "$state"; log "purged $state" ;;
  *) echo "usage: $0 [--state DIR] up [--fresh] | down [--keep-data] | status | env | purge" >&2; exit 2 ;;
esac
