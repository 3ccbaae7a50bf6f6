#!/usr/bin/env bash
# Local Kubernetes control plane for finetune-operator tests: etcd + kube-apiserver +
# kube-controller-manager + kube-scheduler + KWOK (simulated nodes and pod lifecycle), all as plain
# processes, built by tools/k8s/build.sh; plus, by default, one real node (fto-node-0: containerd + runc,
# CNI bridge fto0 10.245.0.1/24, kubelet, kube-proxy, CoreDNS; tools/k8s/node/node.sh) that runs real pods.
#
# Usage: cluster.sh [--state DIR] up [--fresh] [--no-real-node] | down [--keep-data] | status | env | purge
#                                 | load-image OCI_ARCHIVE... | images
#
#   up       start the plane (idempotent: does nothing if it is already up and healthy) and wait until
#            /readyz is ok, the KWOK nodes (and the real node) are Ready and the default ServiceAccount exists.
#            --fresh: wipe the cluster data (etcd) first. --no-real-node (or FTO_K8S_REAL_NODE=0): KWOK only,
#            everything on 127.0.0.1 (no root needed).
#   down     stop the processes this script started (PIDs in <state>/pids/ only); with a real node, first its
#            pods, then the node, and undo every host change it made (mounts, bridge, routes, iptables chains,
#            cgroups, sysctls). The cluster data (etcd) is wiped unless --keep-data, so the next `up` starts
#            from an empty cluster; the certificates are kept.
#   status   print each component's state (pid, RSS, health); exit 0 only if everything is up.
#   env      print `export KUBECONFIG=...` and `export PATH=<bin dir>:$PATH` (eval "$(cluster.sh env)").
#   purge    down, then delete the whole state directory.
#   load-image  import OCI-layout archives into the real node's containerd (namespace k8s.io) under the name
#            in their io.containerd.image.name annotation; skips an image already there with the same digest.
#            Pods use them with imagePullPolicy: Never (or IfNotPresent and a tag other than latest).
#   images   list the images in the real node's containerd.
#
# Environment: FTO_K8S_STATE (state dir, default ~/.local/state/finetune-operator/plane),
#              FTO_K8S_BIN (bin dir; default: what tools/k8s/build.sh --print-bin-dir says),
#              FTO_K8S_NODES (number of KWOK nodes, default 2), FTO_K8S_UP_TIMEOUT (seconds, default 120),
#              FTO_K8S_REAL_NODE (1 default: start the real node; 0: KWOK only. Unset and the machine's
#              real node already owned by another plane: this one starts KWOK-only, and says so),
#              FTO_K8S_APISERVER_FLAGS (extra kube-apiserver flags, split on spaces, for diagnostics such as an
#              audit log: bench/operator_scale.py --audit; they apply when the API server starts, not to a plane
#              that is already up).
#
# Layout of the state dir: kubeconfig (admin, certs embedded), pki/, etcd/ (data), logs/<component>.log,
# pids/<component>.pid, ports.env, *.kubeconfig (per component), real-node (present while the plane runs
# with the real node), node/ (the real node's configs, containerd root, kubelet root, host.saved).
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
# shellcheck source=versions.env
. "$here/versions.env"
# shellcheck source=node/node.sh
. "$here/node/node.sh"
# The API server listens on 127.0.0.1, or on the real node's bridge address (where pods reach it) when the
# plane runs with the real node.
api_host() { if [[ -f "$state/real-node" ]]; then echo "$node_ip"; else echo 127.0.0.1; fi; }

# ------------------------------------------------------------------------------ processes
running() { # pid -> 0 if the process exists and is not a zombie (an exited one may wait a while for init to reap it)
  local st
  st="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$st" && "$st" != Z ]]
}
pid_of() { # component -> pid if that process is alive and is ours (its command line names the state dir)
  local f="$pids/$1.pid" p
  [[ -f "$f" ]] || return 1
  p="$(cat "$f")"
  [[ "$p" =~ ^[0-9]+$ ]] || return 1
  running "$p" || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -qF -- "$state" || return 1
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
  node_stop
  # etcd last, once the API server is gone: a stopping API server removes its address from the `kubernetes`
  # Service's endpoint leases in etcd, and waits ~10 s for an etcd that is already gone.
  stop_procs kwok kube-scheduler kube-controller-manager kube-apiserver
  stop_procs etcd
  node_host_clean
}

stop_procs() { # component... : TERM them together, wait up to 10 s, KILL what is left
  local c p i alive
  local -a mine=()
  for c in "$@"; do
    if p="$(pid_of "$c")"; then kill -TERM "$p" 2>/dev/null || true; mine+=("$p"); log "stopping $c (pid $p)"; fi
    rm -f "$pids/$c.pid"
  done
  for ((i = 0; i < 100; i++)); do
    alive=0
    for p in "${mine[@]}"; do running "$p" && alive=1; done
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
# Listening ports are picked below the kernel's ephemeral range (ip_local_port_range, 32768-60999 by default):
# a port in it can be taken at any time as the local port of some outgoing connection, and a component that
# starts later then fails to bind it (seen: the kubelet's healthz port, held for a minute).
port_range() { # -> "lo hi" of the range to pick listening ports from
  local elo=32768 ehi=60999
  read -r elo ehi 2>/dev/null </proc/sys/net/ipv4/ip_local_port_range || true
  if ((elo > 12000)); then echo "10000 $((elo - 1))"; else echo "$((ehi + 1)) 65535"; fi
}
pick_port() { # [taken ports...] -> a free port, none of the taken ones (nothing listens on those yet)
  local p i lo hi
  read -r lo hi < <(port_range)
  for ((i = 0; i < 200; i++)); do
    p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
    [[ " $* " == *" $p "* ]] && continue
    port_free "$p" && { echo "$p"; return 0; }
  done
  die "no free port found"
}
PORT_VARS=(ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHED_PORT KWOK_PORT
  KUBELET_PORT KUBELET_HEALTHZ_PORT PROXY_HEALTHZ_PORT PROXY_METRICS_PORT DNS_HEALTH_PORT DNS_READY_PORT)
ensure_ports() { # keep the previous ports when they are still free (stable kubeconfig), else pick new ones
  local ok=1 v lo hi
  if [[ -f "$state/ports.env" ]]; then
    # shellcheck disable=SC1091
    . "$state/ports.env"
    read -r lo hi < <(port_range)
    local seen=" "
    for v in "${PORT_VARS[@]}"; do
      [[ -n "${!v:-}" ]] && port_free "${!v}" || ok=0
      ((${!v:-0} >= lo && ${!v:-0} <= hi)) || ok=0 # picked by an older cluster.sh inside the ephemeral range
      [[ "$seen" == *" ${!v:-} "* ]] && ok=0 # one port picked twice by an older cluster.sh
      seen+="${!v:-} "
    done
  else
    ok=0
  fi
  if ((!ok)); then
    : >"$state/ports.env.tmp"
    local picked=()
    # Two components given one port fail only when the second binds it (seen in CI: etcd's peer port and kwok's).
    for v in "${PORT_VARS[@]}"; do
      printf -v "$v" '%s' "$(pick_port "${picked[@]}")"
      picked+=("${!v}")
      echo "$v=${!v}" >>"$state/ports.env.tmp"
    done
    mv "$state/ports.env.tmp" "$state/ports.env"
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
    # the bridge address (the API server's address with the real node) was added later: renew older certs
    if [[ -f apiserver.crt ]] && ! openssl x509 -in apiserver.crt -noout -text 2>/dev/null | grep -q "IP Address:$node_ip\b"; then
      log "renewing the apiserver certificate (adds IP:$node_ip)"
      rm -f apiserver.crt apiserver.key
    fi
    cert apiserver "/CN=kube-apiserver" \
      "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.96.0.1,IP:$node_ip"
    cert admin "/O=system:masters/CN=kubernetes-admin"
    cert kube-controller-manager "/CN=system:kube-controller-manager"
    cert kube-scheduler "/CN=system:kube-scheduler"
    cert kwok "/O=system:masters/CN=kwok-controller"
    cert front-proxy-client "/CN=front-proxy-client"
    # the real node: kubelet (Node authorizer + NodeRestriction), kube-proxy (system:node-proxier), CoreDNS,
    # and the API server's client certificate for the kubelet API (logs, exec)
    cert kubelet "/O=system:nodes/CN=system:node:$node_name"
    cert kube-proxy "/CN=system:kube-proxy"
    cert coredns "/CN=system:fto-coredns"
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
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
    server: https://$(api_host):$APISERVER_PORT
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
    "https://$(api_host):$1$2" >/dev/null 2>&1
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
  if [[ -f "$state/real-node" ]]; then
    for c in "${node_components[@]}"; do pid_of "$c" >/dev/null && node_health "$c" || return 1; done
  fi
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
  rm -f "$state/real-node"
  exit 1
}

# ------------------------------------------------------------------------------ commands
real_node_reason=""
want_real_node() { # -> 0 if this `up` starts the real node (sets real_node_reason otherwise)
  local want="${FTO_K8S_REAL_NODE:-}" owner
  ((no_real_node)) && { real_node_reason="--no-real-node"; return 1; }
  [[ "$want" == 0 || "$want" == false || "$want" == no ]] && { real_node_reason="FTO_K8S_REAL_NODE=$want"; return 1; }
  owner="$(node_owner)"
  if [[ -n "$owner" && "$owner" != "$state" ]]; then
    [[ -n "$want" ]] && die "the machine's real node belongs to the plane in $owner; stop it there (FTO_K8S_STATE=$owner $0 down) or use FTO_K8S_REAL_NODE=0"
    log "the machine's real node belongs to the plane in $owner: this plane starts KWOK-only"
    real_node_reason="owned by $owner"
    return 1
  fi
  return 0
}

cmd_up() {
  local fresh=0 arg real=0
  no_real_node=0
  for arg in "$@"; do
    case "$arg" in
      --fresh) fresh=1 ;;
      --no-real-node) no_real_node=1 ;;
      *) die "up: unknown option $arg" ;;
    esac
  done
  local t0=$SECONDS
  command -v curl >/dev/null || die "curl not found"
  local c
  for c in "${components[@]}" kubectl; do
    [[ -x "$bin/$c" ]] || die "$bin/$c is missing; build the binaries first: tools/k8s/build.sh"
  done
  want_real_node && real=1
  if ((real)); then
    node_preflight || die "the real node cannot start here (see above); FTO_K8S_REAL_NODE=0 starts the plane KWOK-only"
  fi
  # Already up in the wanted shape: nothing to do.
  if ((!fresh)) && { ((real)) && [[ -f "$state/real-node" ]] || { ((!real)) && [[ ! -f "$state/real-node" ]]; }; } && all_healthy; then
    log "already up (state $state$( ((real)) && echo ", real node $node_name"))"
    return 0
  fi
  # Anything half-running from a previous attempt is stopped first (the real node too, host changes undone).
  stop_all
  if ((fresh)); then rm -rf "$state/etcd"; fi
  if ((real)); then touch "$state/real-node"; else rm -f "$state/real-node"; fi
  gen_pki
  ensure_ports
  mkdir -p "$logs" "$pids"
  : >"$logs/up.log"
  write_kubeconfig "$kubeconfig" kubernetes-admin admin
  write_kubeconfig "$state/kube-controller-manager.kubeconfig" system:kube-controller-manager kube-controller-manager
  write_kubeconfig "$state/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
  write_kubeconfig "$state/kwok.kubeconfig" kwok-controller kwok
  local -a apiserver_node_flags=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none)
  if ((real)); then
    write_kubeconfig "$state/kubelet.kubeconfig" "system:node:$node_name" kubelet
    write_kubeconfig "$state/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
    write_kubeconfig "$state/coredns.kubeconfig" system:fto-coredns coredns
    log "setting up the real node's host side (bridge $node_bridge $node_ip/24, routes, iptables)"
    mkdir -p "$node"
    node_save_host
    node_network_up
    node_write_configs
    node_start_containerd
    # Pods reach the API server at the bridge address through the `kubernetes` Service (kube-proxy), so it
    # listens there and the lease reconciler keeps that address in the Service's endpoints.
    apiserver_node_flags=(--bind-address="$node_ip" --advertise-address="$node_ip" --endpoint-reconciler-type=lease
      --kubelet-preferred-address-types=InternalIP
      --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" --kubelet-client-key="$pki/apiserver-kubelet-client.key")
  fi

  log "starting etcd on 127.0.0.1:$ETCD_PORT"
  start etcd --name=node0 --data-dir="$state/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="node0=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true --quota-backend-bytes=4294967296 --log-level=warn
  wait_for "etcd healthy" 30 health etcd || fail_up etcd

  local -a apiserver_extra_flags=()
  read -ra apiserver_extra_flags <<< "${FTO_K8S_APISERVER_FLAGS:-}"
  log "starting kube-apiserver on https://$(api_host):$APISERVER_PORT"
  start kube-apiserver \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    "${apiserver_node_flags[@]}" --secure-port="$APISERVER_PORT" \
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
    --profiling=false "${apiserver_extra_flags[@]}"
  wait_for "kube-apiserver ready" 90 health kube-apiserver || fail_up kube-apiserver
  if ((real)); then node_import_pause || fail_up containerd; fi

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
  if ((real)); then
    wait_for "node API objects (kube-dns Service, CoreDNS RBAC)" 30 node_api_objects || fail_up kube-apiserver
    node_start_rest
  fi

  wait_for "kube-controller-manager healthy" 60 health kube-controller-manager || fail_up kube-controller-manager
  wait_for "kube-scheduler healthy" 60 health kube-scheduler || fail_up kube-scheduler
  wait_for "kwok healthy" 60 health kwok || fail_up kwok
  wait_for "nodes Ready" 60 nodes_ready || fail_up kwok
  if ((real)); then
    wait_for "coredns ready" 60 node_health coredns || fail_up coredns
    wait_for "kube-proxy healthy" 60 node_health kube-proxy || fail_up kube-proxy
    wait_for "kubelet healthy" 60 node_health kubelet || fail_up kubelet
    wait_for "$node_name Ready" 90 node_ready || fail_up kubelet
    wait_for "kubernetes Service endpoint $node_ip" 30 kubernetes_endpoint_ok || fail_up kube-apiserver
  fi
  wait_for "default ServiceAccount exists" 60 default_sa_exists || fail_up kube-controller-manager
  if ((real)); then c=" (real node $node_name, API server $node_ip:$APISERVER_PORT)"; else c=" (KWOK only: $real_node_reason)"; fi
  log "up in $((SECONDS - t0))s$c: export KUBECONFIG=$kubeconfig"
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
  rm -f "$state/real-node"
  if ((!keep)); then rm -rf "$state/etcd"; fi
  log "down (state $state$( ((keep)) && echo ', data kept'))"
}

status_rows() { # health-function component... -> one row each, RSS added to status_rss; 1 if any is unhealthy
  local check=$1 c p r h bad=0
  shift
  for c in "$@"; do
    if p="$(pid_of "$c")"; then
      r="$(rss_kib "$p")"; status_rss=$((status_rss + r))
      if "$check" "$c"; then h=ok; else h=unhealthy; bad=1; fi
      printf '%-24s %-8s %-10s %s\n' "$c" "$p" "$((r / 1024))" "$h"
    else
      printf '%-24s %-8s %-10s %s\n' "$c" - - stopped
      bad=1
    fi
  done
  return $bad
}

cmd_status() {
  local ok=0 total status_rss=0
  load_ports || true
  printf '%-24s %-8s %-10s %s\n' COMPONENT PID RSS_MiB HEALTH
  status_rows health "${components[@]}" || ok=1
  if [[ -f "$state/real-node" ]]; then
    status_rows node_health "${node_components[@]}" || ok=1
  fi
  total=$status_rss
  printf '%-24s %-8s %-10s\n' total "" "$((total / 1024))"
  echo "state: $state"
  echo "kubeconfig: $kubeconfig"
  [[ -n "${APISERVER_PORT:-}" ]] && echo "apiserver: https://$(api_host):$APISERVER_PORT"
  if [[ -f "$state/real-node" ]]; then
    echo "real node: $node_name (label $node_label, taint $node_taint_key=$node_taint_value:NoSchedule), bridge $node_bridge $node_ip, pods $node_cidr, DNS $dns_ip"
    echo "containerd: $node_sock (cluster.sh load-image ARCHIVE...)"
  fi
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
  load-image)
    [[ $# -ge 1 ]] || die "usage: $0 load-image OCI_ARCHIVE..."
    [[ -f "$state/real-node" ]] && node_health containerd || die "the real node is not running (cluster.sh up)"
    node_load_images "$@" ;;
  images) node_list_images ;;
  *) echo "usage: $0 [--state DIR] up [--fresh] [--no-real-node] | down [--keep-data] | status | env | purge | load-image OCI_ARCHIVE... | images" >&2; exit 2 ;;
esac
