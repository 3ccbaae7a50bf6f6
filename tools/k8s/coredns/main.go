// Command coredns is the cluster DNS server of the local plane's real node (tools/k8s/cluster.sh).
//
// It is CoreDNS (github.com/coredns/coredns, version pinned in tools/k8s/versions.env) linked with only
// the plugins the plane needs: it answers cluster.local names from the API server (Services, headless
// Service pod records, the `kubernetes` Service) and nothing else. There is deliberately no `forward`
// plugin: a name outside the cluster zone is refused, never sent to the machine's resolver.
// Its own module (tools/k8s/coredns/go.mod), so its dependencies do not move the control plane's.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
