package demo

import (
	"fmt"
	"strconv"
)

// The loopback ports the demo listens on by default (Config.BasePort 0).
const (
	DefaultIngestPort      = 8080
	DefaultAdminPort       = 8081
	DefaultNATSPort        = 4222
	DefaultSandboxPort     = 9000
	DefaultConsolePort     = 8082
	DefaultWorkerPortFirst = 9091
)

// Offsets from Config.BasePort when it is set: ingest's public listener
// takes the base port itself, then admin, NATS, the sandbox and the
// operator console, then one
// metrics port per worker. The demo then needs the ports from N to
// N+portsBeforeWorkers+workers-1.
const (
	offsetIngest       = 0
	offsetAdmin        = 1
	offsetNATS         = 2
	offsetSandbox      = 3
	offsetConsole      = 4
	portsBeforeWorkers = 5
)

// ports is the demo's port plan; every listener binds 127.0.0.1.
type ports struct {
	ingest, admin, nats, sandbox, console int
	// workers are the workers' metrics ports, one per worker.
	workers []int
}

// planPorts returns the ports for base and workers: the default ports
// when base is 0, else base plus each listener's offset. It does not
// check the range (Config.validate does).
func planPorts(base, workers int) ports {
	p := ports{ingest: DefaultIngestPort, admin: DefaultAdminPort, nats: DefaultNATSPort, sandbox: DefaultSandboxPort, console: DefaultConsolePort}
	first := DefaultWorkerPortFirst
	if base != 0 {
		p = ports{ingest: base + offsetIngest, admin: base + offsetAdmin, nats: base + offsetNATS, sandbox: base + offsetSandbox, console: base + offsetConsole}
		first = base + portsBeforeWorkers
	}
	for i := range workers {
		p.workers = append(p.workers, first+i)
	}
	return p
}

// maxBasePort is the highest -base-port that leaves room for workers.
func maxBasePort(workers int) int { return 65535 - (portsBeforeWorkers + workers - 1) }

// addr is 127.0.0.1:port.
func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// String lists the ports as the README names them, e.g. "8080 (ingest),
// 8081 (admin), 4222 (NATS), 9000 (sandbox), 8082 (console), 9091-9092
// (workers)".
func (p ports) String() string {
	w := ""
	switch len(p.workers) {
	case 0:
	case 1:
		w = fmt.Sprintf(", %d (worker)", p.workers[0])
	default:
		w = fmt.Sprintf(", %d-%d (workers)", p.workers[0], p.workers[len(p.workers)-1])
	}
	return fmt.Sprintf("%d (ingest), %d (admin), %d (NATS), %d (sandbox), %d (console)%s", p.ingest, p.admin, p.nats, p.sandbox, p.console, w)
}
