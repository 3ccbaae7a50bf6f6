# shellcheck shell=bash
# The real node of the local plane: containerd + runc + CNI bridge, kubelet, kube-proxy (iptables) and CoreDNS,
# beside the KWOK nodes. Sourced by tools/k8s/cluster.sh (uses its state/bin/pki/logs/pids, log, die, start,
# pid_of, wait_for, kc). Needs root. One real node per machine: the plane that owns it is written in
# $node_run/owner; another plane started meanwhile runs KWOK-only.
#
# Host changes (all undone by `down`, in this order: pods, Node, kubelet, kube-proxy, CoreDNS, containers,
# containerd, shims, mounts; then the control plane; then veths, bridge, routes, iptables chains, cgroups,
# files, sysctls):
#   bridge fto0 10.245.0.1/24 (node IP, API server, DNS); pods get 10.245.0.0/24 from host-local IPAM;
#   routes 10.96.0.0/16 dev fto0 (Service IPs from the host stay on the bridge) and `unreachable` for KWOK's
#   fake addresses (10.244.0.0/16 pod IPs, 10.0.0.1 node IP), so nothing the plane sends leaves the machine;
#   iptables: FTO-FORWARD (nothing is forwarded between fto0 and another interface), the kubelet's and
#   kube-proxy's KUBE-* chains, CNI portmap's CNI-* chains;
#   sysctls: net.ipv4.ip_forward=1 (CNI bridge), and what the kubelet sets (vm.overcommit_memory, kernel.panic,
#   kernel.panic_on_oops, ...): the previous values are saved in <state>/node/host.saved and restored;
#   cgroups kubepods/ in every hierarchy; /var/lib/kubelet/device-plugins, /var/log/containers, /var/lib/cni.

node_name=fto-node-0
node_label="finetune.io/node=real"
node_taint_key=finetune.io/node node_taint_value=real
node_bridge=fto0
node_cidr=10.245.0.0/24
node_ip=10.245.0.1
dns_ip=10.96.0.10
node_run=/run/fto-node            # short paths: shim sockets (<= 38 chars), runc state, the owner file
node="$state/node"
node_sock="$node/containerd/containerd.sock"
node_components=(containerd coredns kube-proxy kubelet)  # start order; stopped in reverse
pause_ref=localhost/fto/pause:1
fake_routes=("unreachable 10.244.0.0/16" "unreachable 10.0.0.1/32")
node_sysctls=(net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv4.conf.default.forwarding
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.netfilter.nf_conntrack_max)
node_host_dirs=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni)

images_dir() { echo "$(dirname "$bin")/images"; }
ctr() { "$bin/ctr" --address "$node_sock" -n k8s.io "$@"; }

node_owner() { cat "$node_run/owner" 2>/dev/null || true; }
node_mine() { [[ "$(node_owner)" == "$state" || -f "$node/host.saved" ]]; }

# ------------------------------------------------------------------------------ preflight
node_preflight() { # -> 0 if this machine can run the node; prints what is missing
  local miss=() b
  ((EUID == 0)) || miss+=("root (the node mounts, creates a bridge and cgroups)")
  for b in kubelet kube-proxy containerd ctr containerd-shim-runc-v2 coredns; do
    [[ -x "$bin/$b" ]] || miss+=("$bin/$b (tools/k8s/build.sh)")
  done
  [[ -f "$(images_dir)/pause.oci.tar" ]] || miss+=("$(images_dir)/pause.oci.tar (tools/k8s/build.sh)")
  [[ -x /usr/sbin/runc ]] || miss+=("/usr/sbin/runc (apt-get install runc)")
  for b in bridge host-local loopback portmap; do
    [[ -x /usr/lib/cni/$b ]] || miss+=("/usr/lib/cni/$b (apt-get install containernetworking-plugins)")
  done
  for b in iptables ip6tables iptables-save ip findmnt; do
    command -v "$b" >/dev/null || miss+=("$b (apt-get install iptables iproute2 util-linux)")
  done
  [[ -d /sys/fs/cgroup/memory || -f /sys/fs/cgroup/cgroup.controllers ]] || miss+=("a memory cgroup")
  if [[ ! -d /proc/sys/net/bridge ]]; then modprobe br_netfilter 2>/dev/null || true; fi
  [[ -d /proc/sys/net/bridge ]] || miss+=("the br_netfilter kernel module")
  if ((${#miss[@]})); then printf '  missing: %s\n' "${miss[@]}" >&2; return 1; fi
}

# ------------------------------------------------------------------------------ host: save / network
node_save_host() { # once per up..down cycle: a crashed `up` must not overwrite the values from before it
  [[ -f "$node/host.saved" ]] && return 0
  local k d tmp="$node/host.saved.tmp"
  : >"$tmp"
  for k in "${node_sysctls[@]}"; do
    [[ -e "/proc/sys/${k//.//}" ]] && echo "sysctl $k $(cat "/proc/sys/${k//.//}")" >>"$tmp"
  done
  for d in "${node_host_dirs[@]}"; do [[ -e "$d" ]] && echo "existed $d" >>"$tmp"; done
  # nftables tables that iptables-nft creates on first use (empty "ip filter" etc. after the chains are gone)
  if command -v nft >/dev/null; then nft list tables 2>/dev/null | sed 's/^table /nft-table /' >>"$tmp"; fi
  mv "$tmp" "$node/host.saved"
}

node_network_up() {
  if ! ip link show "$node_bridge" >/dev/null 2>&1; then
    ip link add "$node_bridge" type bridge
  fi
  ip addr replace "$node_ip/24" dev "$node_bridge"
  ip link set "$node_bridge" up
  # Service IPs from host processes: routed to the bridge (DNAT by kube-proxy happens after this lookup);
  # KWOK's fake pod/node IPs: unreachable, never the default route.
  ip route replace 10.96.0.0/16 dev "$node_bridge" src "$node_ip"
  local r
  for r in "${fake_routes[@]}"; do
    # shellcheck disable=SC2086
    ip route replace $r
  done
  # Nothing is forwarded between the bridge and any other interface (the CNI bridge turns ip_forward on).
  iptables -w -N FTO-FORWARD 2>/dev/null || iptables -w -F FTO-FORWARD
  iptables -w -A FTO-FORWARD -i "$node_bridge" ! -o "$node_bridge" -m comment --comment "fto: pods stay on this machine" -j REJECT --reject-with icmp-net-prohibited
  iptables -w -A FTO-FORWARD ! -i "$node_bridge" -o "$node_bridge" -m comment --comment "fto: nothing forwarded into the pod bridge" -j DROP
  iptables -w -C FORWARD -j FTO-FORWARD 2>/dev/null || iptables -w -I FORWARD 1 -j FTO-FORWARD
}

# ------------------------------------------------------------------------------ config files
node_write_configs() {
  mkdir -p "$node"/{containerd,cni/net.d,cni/ipam,kubelet/root,kubelet/pod-logs,kube-proxy,coredns} "$node_run"
  echo "$state" >"$node_run/owner"
  : >"$node/resolv.conf" # the pods' "host" resolver: empty, so only the cluster DNS is ever asked

  cat >"$node/containerd/config.toml" <<EOF
# Generated by tools/k8s/cluster.sh; containerd ${CONTAINERD_VERSION:-v2} config version 4.
version = 4
root = '$node/containerd/root'
state = '$node/containerd/state'
imports = []
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.snapshotter.v1.blockfile', 'io.containerd.snapshotter.v1.erofs', 'io.containerd.differ.v1.erofs']

[plugins.'io.containerd.server.v1.grpc']
  address = '$node_sock'
[plugins.'io.containerd.server.v1.ttrpc']
  address = '$node_sock.ttrpc'
[plugins.'io.containerd.server.v1.debug']
  address = ''
[plugins.'io.containerd.internal.v1.opt']
  path = '$node/containerd/opt'
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = '$node_run/s'
[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = '$node/containerd/image-verifier'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '$pause_ref'
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = ''

[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj is refused (runc: "can't get final child's PID")
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '/usr/sbin/runc'
        Root = '$node_run/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/usr/lib/cni']
    conf_dir = '$node/cni/net.d'
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
EOF

  cat >"$node/cni/net.d/10-fto.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "fto",
  "plugins": [
    {
      "type": "bridge", "bridge": "$node_bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$node/cni/ipam",
        "ranges": [[{"subnet": "$node_cidr", "gateway": "$node_ip", "rangeStart": "10.245.0.10"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat >"$node/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$node_sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$dns_ip]
resolvConf: $node/resolv.conf
podLogsDir: $node/kubelet/pod-logs
registerWithTaints:
- {key: $node_taint_key, value: $node_taint_value, effect: NoSchedule}
# 2 cores, 24 GiB: all the CPU to pods; 2 GiB of memory kept for the control plane, the operator and the tests.
systemReserved: {memory: 2Gi}
enforceNodeAllocatable: [pods]
# shared disks: evict only when really full, never garbage-collect the imported images (they cannot be pulled)
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%, imagefs.inodesFree: 1%}
mergeDefaultEvictionSettings: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
nodeStatusReportFrequency: 10s
shutdownGracePeriod: 0s
rotateCertificates: false
serverTLSBootstrap: false
EOF

  cat >"$node/kube-proxy/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $state/kube-proxy.kubeconfig}
hostnameOverride: $node_name
mode: iptables
clusterCIDR: $node_cidr
detectLocalMode: ClusterCIDR
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
# NodePorts only on the bridge (not on this machine's own interfaces); no route_localnet, no conntrack sysctls
nodePortAddresses: [$node_cidr]
iptables: {localhostNodePorts: false, masqueradeAll: false, syncPeriod: 30s, minSyncPeriod: 1s}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}
oomScoreAdj: 0
EOF

  # No `forward`: names outside the cluster zones are refused, never sent to the machine's resolver.
  cat >"$node/coredns/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $node_ip
    errors
    health 127.0.0.1:$DNS_HEALTH_PORT
    ready 127.0.0.1:$DNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $state/coredns.kubeconfig finetune-test
        pods insecure
        ttl 5
    }
    cache 5 {
        denial 1000 1
    }
}
EOF
}

# Objects the node's components need in the API: the DNS Service (selectorless, its endpoint is the bridge
# address where CoreDNS listens) and CoreDNS's read access.
node_api_objects() {
  kc apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "fto:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "fto:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "fto:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:fto-coredns"}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}}
spec:
  clusterIP: $dns_ip
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: cluster.sh.finetune.io}
addressType: IPv4
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
endpoints:
- addresses: [$node_ip]
  conditions: {ready: true}
EOF
}

# ------------------------------------------------------------------------------ start
node_start_containerd() {
  log "starting containerd (socket $node_sock)"
  PATH="$bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    start containerd --config "$node/containerd/config.toml" --log-level warn
}

node_import_pause() {
  wait_for "containerd ready" 60 node_health containerd || return 1
  node_load_images "$(images_dir)/pause.oci.tar" >/dev/null
}

node_start_rest() {
  node_api_objects
  # a Node left from a plane that stopped without `down` (data kept) would look Ready before the kubelet reports
  kc delete node "$node_name" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  log "starting coredns on $node_ip:53 (Service $dns_ip), kube-proxy, kubelet ($node_name)"
  start coredns -conf "$node/coredns/Corefile"
  start kube-proxy --config="$node/kube-proxy/config.yaml"
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    start kubelet --config="$node/kubelet/config.yaml" --kubeconfig="$state/kubelet.kubeconfig" \
    --root-dir="$node/kubelet/root" --cert-dir="$node/kubelet/pki" --hostname-override="$node_name" --node-ip="$node_ip" \
    --node-labels="$node_label"
}

node_ready() {
  [[ "$(kc get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
kubernetes_endpoint_ok() { # the `kubernetes` Service has the bridge address as its endpoint (pods reach it)
  kc get endpointslice -n default kubernetes -o jsonpath='{.endpoints[*].addresses[*]}' 2>/dev/null | grep -qw "$node_ip"
}

node_health() { # component -> 0 if healthy
  case "$1" in
    containerd) "$bin/ctr" --address "$node_sock" --timeout 2s version >/dev/null 2>&1 ;;
    kubelet) curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" >/dev/null 2>&1 ;;
    kube-proxy) curl -fsS --max-time 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" >/dev/null 2>&1 ;;
    coredns) curl -fsS --max-time 2 "http://127.0.0.1:$DNS_READY_PORT/ready" >/dev/null 2>&1 ;;
  esac
}

# ------------------------------------------------------------------------------ images
# Import OCI-layout archives into the node's containerd (namespace k8s.io), under the name in each manifest's
# io.containerd.image.name annotation. An image already there with the same manifest digest is skipped.
node_load_images() {
  local f refs ref digest have n=0 skipped=0
  for f in "$@"; do
    [[ -f "$f" ]] || die "load-image: $f: no such file"
    refs="$(tar -xOf "$f" index.json 2>/dev/null |
      jq -r '.manifests[] | "\(.annotations["io.containerd.image.name"] // "") \(.digest)"' 2>/dev/null)" ||
      die "load-image: $f is not an OCI layout archive (no index.json)"
    [[ -n "$refs" ]] || die "load-image: $f: no manifests in index.json"
    local all_there=1
    while read -r ref digest; do
      [[ -n "$ref" ]] || die "load-image: $f: a manifest without the io.containerd.image.name annotation (the image's full name)"
      have="$(ctr images ls "name==$ref" 2>/dev/null | awk -v r="$ref" '$1 == r {print $3}')"
      [[ "$have" == "$digest" ]] || all_there=0
    done <<<"$refs"
    if ((all_there)); then
      skipped=$((skipped + 1)); echo "$(awk '{print $1}' <<<"$refs" | paste -sd' ') (already loaded)"
      while read -r ref digest; do node_drop_older_tags "$ref"; done <<<"$refs"
      continue
    fi
    local out
    out="$(ctr images import --label io.cri-containerd.image=managed "$f" 2>&1)" ||
      die "load-image: ctr images import $f failed: $out"
    while read -r ref digest; do
      have="$(ctr images ls "name==$ref" 2>/dev/null | awk -v r="$ref" '$1 == r {print $3}')"
      [[ "$have" == "$digest" ]] || die "load-image: $ref is $have after the import, expected $digest"
      echo "$ref $digest"
      node_drop_older_tags "$ref"
    done <<<"$refs"
    n=$((n + 1))
  done
}

# Other tags of the repository just loaded go, unless a container still uses one: the node outlives many builds,
# and kept every one (a trainer image is ~7 GB; 20 GB after one day of sessions). containerd collects the layers.
node_drop_older_tags() {
  local repo="${1%:*}" used other
  used="$(ctr containers ls 2>/dev/null | awk 'NR > 1 {print $2}')"
  for other in $(ctr images ls -q 2>/dev/null); do
    [[ "${other%:*}" == "$repo" && "$other" != "$1" ]] || continue
    grep -qxF "$other" <<<"$used" && continue
    ctr images rm "$other" >/dev/null 2>&1 || true
  done
}

node_list_images() {
  node_health containerd || die "the real node's containerd is not running (cluster.sh up)"
  ctr images ls 2>/dev/null | awk 'NR == 1 {print "IMAGE", "DIGEST", "SIZE"; next} $1 !~ /^sha256:/ {print $1, $3, $4 $5}' |
    column -t
}

# ------------------------------------------------------------------------------ stop / clean
node_pids_alive() { local c; for c in "${node_components[@]}"; do pid_of "$c" >/dev/null && return 0; done; return 1; }

stop_components() { # seconds-before-KILL component... : TERM them together, wait, KILL what is left
  local t=$1 c p i alive
  local -a mine=()
  shift
  for c in "$@"; do
    if p="$(pid_of "$c")"; then log "stopping $c (pid $p)"; kill -TERM "$p" 2>/dev/null || true; mine+=("$p"); fi
    rm -f "$pids/$c.pid"
  done
  for ((i = 0; i < t * 10; i++)); do
    alive=0
    for p in "${mine[@]}"; do running "$p" && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  for p in "${mine[@]}"; do running "$p" && { log "killing pid $p"; kill -KILL "$p" 2>/dev/null || true; }; done
  return 0
}

our_shims() { # pids of containerd shims started for this node's containerd
  local d
  for d in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$d/cmdline" | grep -q "containerd-shim-runc-v2 .*-address $node_sock" && echo "${d#/proc/}"
  done
  return 0
}

node_kill_cgroup_procs() {
  local f p i n=0
  for ((i = 0; i < 50; i++)); do
    local -a procs=()
    while read -r f; do
      while read -r p; do [[ -n "$p" ]] && procs+=("$p"); done 2>/dev/null <"$f"
    done < <(find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -name cgroup.procs 2>/dev/null)
    ((${#procs[@]})) || break
    ((n)) || log "killing $(printf '%s\n' "${procs[@]}" | sort -u | wc -l) process(es) left in the pods' cgroups"
    n=1
    kill -KILL "${procs[@]}" 2>/dev/null || true
    sleep 0.1
  done
}

node_drain() { # delete the node's pods through the API (the kubelet stops them, CNI DEL frees their IPs)
  local left i force=()
  health kube-apiserver || return 0
  # without a kubelet nobody confirms a graceful deletion: remove the objects (containers are killed below)
  pid_of kubelet >/dev/null && node_health kubelet || force=(--grace-period=0 --force)
  left="$(kc get pods -A --field-selector "spec.nodeName=$node_name" -o name 2>/dev/null | wc -l)"
  if ((left)); then
    log "deleting the $left pod(s) on $node_name${force:+ (no kubelet: forced)}"
    kc get pods -A --field-selector "spec.nodeName=$node_name" \
      -o jsonpath='{range .items[*]}{.metadata.namespace}{" "}{.metadata.name}{"\n"}{end}' 2>/dev/null |
      while read -r ns name; do
        kc delete pod -n "$ns" "$name" --grace-period=2 "${force[@]}" --wait=false >/dev/null 2>&1 || true
      done
    for ((i = 0; i < 120; i++)); do
      left="$(kc get pods -A --field-selector "spec.nodeName=$node_name" -o name 2>/dev/null | wc -l)"
      ((left == 0)) && break
      sleep 0.5
    done
    ((left == 0)) || log "$left pod(s) still on $node_name after 60 s; removing their containers directly"
  fi
  kc delete node "$node_name" --wait=false >/dev/null 2>&1 || true
}

# Stopping is in two halves around the control plane's own stop (cluster.sh stop_all): node_stop (pods, Node,
# processes, containers, mounts), then the API server etc., then node_host_clean (bridge, routes, iptables,
# cgroups, files, sysctls). The bridge goes last: the API server and its clients use its address, and without it
# that address would follow the default route, off the machine.
node_stop() {
  node_mine || { node_pids_alive || return 0; }
  local t0=$SECONDS p id m d t
  load_ports || true
  node_drain
  log "  pods and Node gone ($((SECONDS - t0))s)"
  stop_components 10 kubelet
  stop_components 5 kube-proxy coredns
  # Whatever the kubelet left (it does not stop pods on exit): kill and remove the containers directly.
  if pid_of containerd >/dev/null && node_health containerd; then
    for id in $(ctr tasks ls -q 2>/dev/null); do ctr tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr tasks ls -q 2>/dev/null); do ctr tasks rm -f "$id" >/dev/null 2>&1 || true; done
    for id in $(ctr containers ls -q 2>/dev/null); do ctr containers rm "$id" >/dev/null 2>&1 || true; done
    # sandbox records (the kubelet removes stopped sandboxes only later, by GC): without their state they would
    # pile up and fail to "recover" at every start
    for id in $(ctr sandboxes ls 2>/dev/null | awk 'NR > 1 {print $1}'); do
      ctr sandboxes rm -f "$id" >/dev/null 2>&1 || true
    done
  fi
  stop_components 10 containerd
  log "  processes stopped ($((SECONDS - t0))s)"
  for p in $(our_shims); do log "killing leftover shim $p"; kill -KILL "$p" 2>/dev/null || true; done
  # containers whose shim is gone (containerd or the kubelet crashed): every process in the pods' cgroups
  node_kill_cgroup_procs
  # Mounts: container rootfs, pod volumes, network namespaces, the kubelet's bind mount of its root dir.
  for ((t = 0; t < 3; t++)); do
    m="$(findmnt -rn -o TARGET | awk -v a="$node/" -v b="$node_run/" 'index($0, a) == 1 || index($0, b) == 1' | sort -r)"
    [[ -n "$m" ]] || break
    while read -r d; do umount "$d" 2>/dev/null || umount -l "$d" 2>/dev/null || true; done <<<"$m"
  done
  log "real node stopped ($((SECONDS - t0))s)"
}

node_host_clean() {
  node_mine || return 0
  local d k v r c
  # veths left on the bridge (their netns is gone once unmounted), the bridge, our routes and chains
  for d in $(ip -o link show master "$node_bridge" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$d" 2>/dev/null || true
  done
  ip link del "$node_bridge" 2>/dev/null || true
  for r in "${fake_routes[@]}"; do
    # shellcheck disable=SC2086
    ip route del $r 2>/dev/null || true
  done
  node_clean_iptables
  if [[ -f "$node/host.saved" ]] && command -v nft >/dev/null; then # tables iptables-nft created, now empty
    nft list tables 2>/dev/null | while read -r _ fam tb; do
      grep -qxF "nft-table $fam $tb" "$node/host.saved" && continue
      nft list table "$fam" "$tb" 2>/dev/null | grep -qvE '^\s*(table |chain |type |\}|$)' && continue
      nft delete table "$fam" "$tb" 2>/dev/null || true
    done
  fi
  # cgroups the kubelet made (kubepods/ in every v1 hierarchy and in the unified one)
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$d" ]] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  # files outside the state dir
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  find /var/log/containers -maxdepth 1 -type l -lname "$node/*" -delete 2>/dev/null || true
  rm -f /var/lib/cni/results/fto-* 2>/dev/null || true
  for d in "$node"/containerd/root/io.containerd.grpc.v1.cri/sandboxes/*; do # CNI's cache of our sandboxes
    [[ -d "$d" ]] && rm -f /var/lib/cni/results/*-"${d##*/}"-* 2>/dev/null
  done
  if [[ -f "$node/host.saved" ]]; then
    for d in "${node_host_dirs[@]}"; do
      grep -qxF "existed $d" "$node/host.saved" && continue
      [[ -e "$d" ]] || continue
      # created by the node: removed when nothing else was put there (else left, and said)
      if [[ -z "$(find "$d" -mindepth 1 ! -type d -print -quit 2>/dev/null)" ]]; then rm -rf "$d"
      else log "left $d (created by the node, now holds files of someone else)"; fi
    done
    while read -r k d v; do
      [[ $k == sysctl ]] || continue
      [[ "$(cat "/proc/sys/${d//.//}" 2>/dev/null)" == "$v" ]] && continue
      echo "$v" >"/proc/sys/${d//.//}" 2>/dev/null && log "restored $d = $v" || log "could not restore $d = $v"
    done <"$node/host.saved"
    rm -f "$node/host.saved"
  fi
  rm -rf "$node_run" "$node/containerd/state" "$node/kubelet/root" "$node/cni/ipam" 2>/dev/null ||
    log "could not remove everything under $node (see findmnt)"
  for c in "${node_components[@]}"; do rm -f "$pids/$c.pid"; done
  log "real node's host changes undone"
}

node_clean_iptables() { # the kubelet's and kube-proxy's KUBE-*, CNI portmap's CNI-*, our FTO-* (IPv4 and IPv6)
  local ipt tb rules chains
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for tb in filter nat mangle raw; do
      rules="$("$ipt" -w -t "$tb" -S 2>/dev/null)" || continue
      chains="$(awk '$1 == "-N" && $2 ~ /^(KUBE|CNI|FTO)-/ {print $2}' <<<"$rules")"
      [[ -n "$chains" ]] || grep -qE -- '-j (KUBE|CNI|FTO)-' <<<"$rules" || continue
      # one transaction: unhook from the built-in chains, flush, delete
      {
        echo "*$tb"
        grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE|CNI|FTO)-' <<<"$rules" | sed 's/^-A /-D /'
        [[ -n "$chains" ]] && sed 's/^/-F /' <<<"$chains" && sed 's/^/-X /' <<<"$chains"
        echo COMMIT
      } | "${ipt}-restore" -w --noflush 2>/dev/null && continue
      # slow path, rule by rule, if the transaction was refused
      while read -r rule; do
        eval "$ipt -w -t $tb -D ${rule#-A }" 2>/dev/null || true
      done < <(grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE|CNI|FTO)-' <<<"$rules")
      for ch in $chains; do "$ipt" -w -t "$tb" -F "$ch" 2>/dev/null || true; done
      for ch in $chains; do "$ipt" -w -t "$tb" -X "$ch" 2>/dev/null || true; done
    done
  done
}

