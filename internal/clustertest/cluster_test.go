package clustertest_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/testutil"
)

// deployDir holds the committed NATS configuration under test.
const deployDir = "../../deploy/nats"

// account is the account of deploy/nats/accounts.conf paystream runs in.
const account = "PAYSTREAM"

// credential is a user's password as its client sends it, and the bcrypt
// hash the servers get through the environment, as deploy/nats/README.md
// tells operators to do. The hashes use the minimum cost (4) so that the
// many reconnects of the failover tests stay cheap; they are test values.
type credential struct{ user, password, env, hash, inbox string }

var (
	ingestUser   = credential{"ingest", "ingest-test-pw", "PAYSTREAM_NATS_INGEST_PASSWORD", "$2a$04$H2fv2VO4K6UnvAVMkIRV1.jjKiGwu5eXzDUEgKdfteZ2rZRMKuFPe", "_INBOX_ingest"}
	workerUser   = credential{"worker", "worker-test-pw", "PAYSTREAM_NATS_WORKER_PASSWORD", "$2a$04$m3Ua6GYf65gMPyC7rQ1f8ernd35aTCG60/1U6g4VW.FyPR5EfJIve", "_INBOX_worker"}
	operatorUser = credential{"operator", "operator-test-pw", "PAYSTREAM_NATS_OPERATOR_PASSWORD", "$2a$04$k6QDEIgTJpdRRSBLYNQ4yOt3KSq9ZAGvBjWtA3F33H/gOI9.t8gK.", "_INBOX_operator"}
	deployAdmin  = credential{"admin", "admin-test-pw", "PAYSTREAM_NATS_ADMIN_PASSWORD", "$2a$04$s.11r6OYvHzCJ7wAhm/Z/eWKFIHjusNAiXazXdQj09b2/lzi7MYtq", "_INBOX_admin"}
	sysUser      = credential{"sys", "sys-test-pw", "PAYSTREAM_NATS_SYS_PASSWORD", "$2a$04$.0HKPMhV89jmUku5RKy7v.m495uN36.wz1EfW.pZyfiNYCPtRZsWu", ""}
	routeUser    = credential{"route", "route-test-pw", "PAYSTREAM_NATS_ROUTE_PASSWORD", "$2a$04$F4GqPIIrWmJ59CCUymjTteC91PgoN.3wXL6F.AdKF0sVTm6aFC4/G", ""}
	// adminUser is added by the tests alone (see loadNode): it has the
	// whole account, to inspect streams and move leaders. No deployed
	// process has such a user.
	adminUser = credential{user: "test-admin", password: "test-admin-pw"}
)

// opt returns the client option that logs in as c, with c's own reply
// inboxes as deploy/nats/README.md tells each process to use
// (-nats-inbox-prefix).
func (c credential) opt() nats.Option {
	return func(o *nats.Options) error {
		if err := nats.UserInfo(c.user, c.password)(o); err != nil {
			return err
		}
		if c.inbox == "" {
			return nil
		}
		return nats.CustomInboxPrefix(c.inbox)(o)
	}
}

// violations collects the permission violations every node logs. NATS
// drops an unauthorized publish without telling the publisher's request
// anything, so this log (and the client's async error) is where a missing
// permission shows.
type violations struct {
	mu    sync.Mutex
	lines []string
	// fatal keeps what would have stopped a nats-server process.
	fatal []string
}

func (v *violations) add(line string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.lines = append(v.lines, line)
}

// all returns what was logged so far.
func (v *violations) all() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.lines...)
}

func (v *violations) fatals() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.fatal...)
}

// serverLog is a node's logger: it keeps violations and fatal errors and
// drops the rest, which route churn in the failover tests makes plentiful.
type serverLog struct{ v *violations }

func (l serverLog) Noticef(string, ...any) {}
func (l serverLog) Warnf(string, ...any)   {}
func (l serverLog) Fatalf(format string, args ...any) {
	l.v.mu.Lock()
	defer l.v.mu.Unlock()
	l.v.fatal = append(l.v.fatal, fmt.Sprintf(format, args...))
}
func (l serverLog) Errorf(format string, args ...any) {
	if line := fmt.Sprintf(format, args...); strings.Contains(line, "Violation") {
		l.v.add(line)
	}
}
func (l serverLog) Debugf(string, ...any) {}
func (l serverLog) Tracef(string, ...any) {}

// cluster is three JetStream nodes configured from deploy/nats, on
// loopback with random ports.
type cluster struct {
	nodes []*server.Server
	down  []bool
	viol  *violations
}

// setAuthEnv provides the variables the committed config requires, as the
// nats-server processes' environment would, with routes to the test's
// cluster ports.
func setAuthEnv(t *testing.T, clusterAddrs []string) {
	t.Helper()
	for _, c := range []credential{ingestUser, workerUser, operatorUser, deployAdmin, sysUser, routeUser} {
		t.Setenv(c.env, c.hash)
	}
	var routes []string
	for _, a := range clusterAddrs {
		routes = append(routes, fmt.Sprintf("nats-route://%s:%s@%s", routeUser.user, routeUser.password, a))
	}
	t.Setenv("PAYSTREAM_NATS_ROUTES", "["+strings.Join(routes, ", ")+"]")
}

// loadNode parses the committed config of node name (n1, n2 or n3) and
// rewrites only where it listens and stores: loopback ports (clusterAddr
// for routes, random ones for clients and monitoring) and a temp store
// dir. Accounts, users, permissions, the route password and the route
// list (from PAYSTREAM_NATS_ROUTES) stay as committed. It adds adminUser
// for the test's own inspections.
func loadNode(t *testing.T, name, clusterAddr string) *server.Options {
	t.Helper()
	opts, err := server.ProcessConfigFile(filepath.Join(deployDir, name+".conf"))
	require.NoError(t, err, "the committed config of %s must parse", name)
	require.Equal(t, name, opts.ServerName)
	require.True(t, opts.JetStream, "%s: JetStream enabled", name)
	require.True(t, opts.SyncAlways, "%s: JetStream fsyncs every write before acknowledging it (sync_interval: always)", name)
	require.NotZero(t, opts.HTTPPort, "%s: monitoring port enabled", name)
	require.Equal(t, "paystream", opts.Cluster.Name)
	require.Equal(t, routeUser.user, opts.Cluster.Username, "%s: routes authenticate", name)
	require.Len(t, opts.Routes, 3, "%s: routes to every node", name)

	host, port, err := net.SplitHostPort(clusterAddr)
	require.NoError(t, err)
	opts.Cluster.Host = host
	opts.Cluster.Port, err = strconv.Atoi(port)
	require.NoError(t, err)
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.HTTPHost, opts.HTTPPort = "127.0.0.1", server.RANDOM_PORT
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true

	var acc *server.Account
	for _, a := range opts.Accounts {
		if a.Name == account {
			acc = a
		}
	}
	require.NotNil(t, acc, "account %s", account)
	opts.Users = append(opts.Users, &server.User{Username: adminUser.user, Password: adminUser.password, Account: acc})
	return opts
}

// startCluster starts three nodes from the committed config and waits for
// a JetStream meta leader. They are shut down when the test ends.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	names := []string{"n1", "n2", "n3"}
	var addrs []string
	for range names {
		addrs = append(addrs, testutil.FreePort(t))
	}
	setAuthEnv(t, addrs)
	c := &cluster{viol: &violations{}}
	for i, name := range names {
		srv, err := server.NewServer(loadNode(t, name, addrs[i]))
		require.NoError(t, err)
		srv.SetLoggerV2(serverLog{c.viol}, false, false, false)
		go srv.Start()
		t.Cleanup(func() {
			srv.Shutdown()
			srv.WaitForShutdown()
		})
		require.True(t, srv.ReadyForConnections(10*time.Second), "%s ready; fatal: %v", name, c.viol.fatals())
		c.nodes = append(c.nodes, srv)
		c.down = append(c.down, false)
	}
	c.waitForMetaLeader(t)
	return c
}

func (c *cluster) waitForMetaLeader(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		leaders, current := 0, 0
		for i, s := range c.nodes {
			if c.down[i] {
				continue
			}
			if s.JetStreamIsLeader() {
				leaders++
			}
			if s.JetStreamIsCurrent() {
				current++
			}
		}
		if leaders == 1 && current == c.alive() {
			return
		}
		require.True(t, time.Now().Before(deadline), "no JetStream meta leader after 20s")
		time.Sleep(25 * time.Millisecond)
	}
}

func (c *cluster) alive() int {
	n := 0
	for _, d := range c.down {
		if !d {
			n++
		}
	}
	return n
}

// url is the client URL list of every node, as paystream's -nats-url.
func (c *cluster) url() string {
	var urls []string
	for _, s := range c.nodes {
		urls = append(urls, s.ClientURL())
	}
	return strings.Join(urls, ",")
}

// connect logs in as cred over TCP; the connection is closed when the test
// ends. Async errors (permission violations) go to errs when it is set.
func (c *cluster) connect(t *testing.T, cred credential, errs chan<- error) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts := []nats.Option{cred.opt(), nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}
	if errs != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	}
	nc, err := nats.Connect(c.url(), opts...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return nc, js
}

// kill shuts node i down for good, as SIGTERM does: the node hands its
// leaderships over as it goes, and its clients lose their connection. (A
// node in the test process cannot be crashed; after a crash the others
// wait for the election timeout, a few seconds, before electing.)
func (c *cluster) kill(t *testing.T, i int) {
	t.Helper()
	c.down[i] = true
	c.nodes[i].Shutdown()
	c.nodes[i].WaitForShutdown()
}

// node returns the index of the node named name.
func (c *cluster) node(t *testing.T, name string) int {
	t.Helper()
	for i, s := range c.nodes {
		if s.Name() == name {
			return i
		}
	}
	t.Fatalf("no node %q", name)
	return -1
}

// clientNode returns the name of the node the client named name is
// connected to.
func (c *cluster) clientNode(t *testing.T, name string) string {
	t.Helper()
	for i, s := range c.nodes {
		if c.down[i] {
			continue
		}
		conns, err := s.Connz(&server.ConnzOptions{})
		require.NoError(t, err)
		for _, ci := range conns.Conns {
			if ci.Name == name {
				return s.Name()
			}
		}
	}
	t.Fatalf("no node has a client named %q", name)
	return ""
}

// streamInfo reads a stream's info, retrying through leader elections for
// at most 15s.
func streamInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := js.Stream(ctx, name)
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = st.Info(ctx)
		}
		cancel()
		if err == nil && info.Cluster != nil && info.Cluster.Leader != "" {
			return info
		}
		require.True(t, time.Now().Before(deadline), "stream %s: %v", name, err)
		time.Sleep(50 * time.Millisecond)
	}
}

// requireNoViolations fails when any node logged a permission violation.
func (c *cluster) requireNoViolations(t *testing.T) {
	t.Helper()
	require.Empty(t, c.viol.all(), "the committed permissions must cover everything the code does")
}
