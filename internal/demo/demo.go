// Package demo runs paystream end to end on loopback, as `make run` does:
// ingest with embedded JetStream, workers and the provider sandbox, each
// the real binary, with live progress read from their metrics. cmd/demo
// parses its flags into a Config and calls Run.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/procs"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
)

// Defaults of Config, and of the demo command's flags.
const (
	DefaultBinDir      = "bin"
	DefaultDir         = ".run"
	DefaultOrders      = 200
	DefaultRate        = 20.0
	DefaultWorkers     = 2
	DefaultFaults      = "500:2,lose:2,ratelimit:1"
	DefaultBitGoFaults = "error500:2,lose:2,reserved:2"
	DefaultCoboShape   = cobosim.ShapeCurrent
	DefaultMerchants   = "M1001,M1002,M1003"
	// UndeliveredReconcileEvery is the workers' -reconcile-every when
	// Config.UndeliveredOrders asks for orders only reconciliation
	// completes; otherwise the workers keep their default (10 min).
	UndeliveredReconcileEvery = 15 * time.Second
)

// demoEnterprise is the BitGo enterprise the demo's sandbox serves.
const demoEnterprise = "demo-enterprise"

const demoRules = `{"splits": [
  {"merchant_id": "M1001", "destination_account": "developer", "share": "0.10", "description": "platform commission"},
  {"merchant_id": "*", "destination_account": "M9000", "share": "0.05", "description": "referral"},
  {"merchant_id": "*", "destination_account": "bitgo:demo-connection", "share": "0.02", "description": "BitGo settlement"}],
 "late_payments": "credit_merchant"}
`

// Config configures a demo run. Fields map one to one to the demo
// command's flags; validation errors name the flag.
type Config struct {
	// BinDir holds the built ingest, worker and sandbox; DefaultBinDir
	// when empty.
	BinDir string
	// Dir receives data, keys and logs, and is recreated; DefaultDir when
	// empty.
	Dir string
	// Orders, ForeignOrders and UndeliveredOrders are the sandbox's
	// -orders, -foreign-orders and -undelivered-orders. With undelivered
	// orders the workers reconcile every UndeliveredReconcileEvery, and
	// the demo counts as settled only once those orders are final too.
	Orders, ForeignOrders, UndeliveredOrders int
	// Rate is orders started per second; 0 is unbounded.
	Rate float64
	// Workers is how many workers run; DefaultWorkers when zero.
	Workers int
	// Faults, CoboShape, Merchants, BitGoFaults and BitGoNonceOnce are
	// passed to the sandbox as its -faults, -cobo-shape, -merchants,
	// -bitgo-faults and -bitgo-nonce-once. Empty faults inject none; an
	// empty shape or merchant list is the sandbox's default.
	Faults         string
	CoboShape      string
	Merchants      string
	BitGoFaults    string
	BitGoNonceOnce bool
	// Duration stops the demo after this long; 0 runs until ctx ends.
	Duration time.Duration
	// BasePort, when not 0, moves every listener to BasePort plus its
	// offset (see planPorts): ingest, admin, NATS, sandbox, then the
	// workers. 0 keeps the default ports.
	BasePort int
	// Out receives the progress; io.Discard when nil.
	Out io.Writer
}

// WithDefaults returns c with every empty field that has a default set
// to it.
func (c Config) WithDefaults() Config {
	if c.BinDir == "" {
		c.BinDir = DefaultBinDir
	}
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.CoboShape == "" {
		c.CoboShape = DefaultCoboShape
	}
	if c.Merchants == "" {
		c.Merchants = DefaultMerchants
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return c
}

// validate checks c after WithDefaults. Its errors name the flag.
func (c Config) validate() error {
	switch {
	case c.Orders < 0:
		return fmt.Errorf("-orders must not be negative, got %d", c.Orders)
	case c.ForeignOrders < 0:
		return fmt.Errorf("-foreign-orders must not be negative, got %d", c.ForeignOrders)
	case c.Orders+c.ForeignOrders == 0:
		return errors.New("-orders and -foreign-orders are both 0: nothing to play")
	case c.UndeliveredOrders < 0 || c.UndeliveredOrders > c.Orders:
		return fmt.Errorf("-undelivered-orders must be from 0 to -orders (%d), got %d", c.Orders, c.UndeliveredOrders)
	case !(c.Rate >= 0):
		return fmt.Errorf("-rate must not be negative, got %v", c.Rate)
	case c.Workers < 1:
		return fmt.Errorf("-workers must be positive, got %d", c.Workers)
	case c.Duration < 0:
		return fmt.Errorf("-duration must not be negative, got %s", c.Duration)
	case c.BasePort != 0 && (c.BasePort < 1 || c.BasePort > maxBasePort(c.Workers)):
		return fmt.Errorf("-base-port must be 0 (the default ports) or from 1 to %d, leaving room for %d ports with -workers %d; got %d",
			maxBasePort(c.Workers), portsBeforeWorkers+c.Workers, c.Workers, c.BasePort)
	}
	if _, err := cobosim.ParseFaultList(c.Faults, http.MethodPost, ""); err != nil {
		return fmt.Errorf("-faults: %w", err)
	}
	if _, err := bitgosim.ParseFaultList(c.BitGoFaults); err != nil {
		return fmt.Errorf("-bitgo-faults: %w", err)
	}
	if _, err := cobosim.ParseShape(c.CoboShape); err != nil {
		return fmt.Errorf("-cobo-shape: %w", err)
	}
	for m := range strings.SplitSeq(c.Merchants, ",") {
		if strings.TrimSpace(m) == "" {
			return fmt.Errorf("-merchants must not name an empty merchant id, got %q", c.Merchants)
		}
	}
	return nil
}

// Files are the keys and rules a run writes into its directory: the
// sandbox is given the same key files to check what the workers send.
type Files struct {
	CoboSecret, Rules, BitGoToken, BitGoKey string
}

// Prepare checks that binDir holds ingest, worker and sandbox, and
// recreates dir with a fresh Cobo API key, BitGo token and signing key,
// and the demo's rules. The benchmark runner prepares its recovery
// measurement with it too.
func Prepare(binDir, dir string) (Files, error) {
	var f Files
	for _, b := range []string{"ingest", "worker", "sandbox"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return f, fmt.Errorf("binary %s missing in %s: run make build", b, binDir)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return f, fmt.Errorf("clean %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, fmt.Errorf("create %s: %w", dir, err)
	}
	// Every secret is random per run: the sandbox is given the same files
	// to check them.
	for _, s := range []struct {
		path *string
		name string
	}{{&f.CoboSecret, "cobo-api-secret"}, {&f.BitGoToken, "bitgo-token"}, {&f.BitGoKey, "bitgo-signing-key"}} {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return f, fmt.Errorf("generate %s: %w", s.name, err)
		}
		*s.path = filepath.Join(dir, s.name)
		if err := os.WriteFile(*s.path, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
			return f, fmt.Errorf("write %s: %w", s.name, err)
		}
	}
	f.Rules = filepath.Join(dir, "rules.json")
	if err := os.WriteFile(f.Rules, []byte(demoRules), 0o600); err != nil {
		return f, fmt.Errorf("write rules: %w", err)
	}
	return f, nil
}

// WorkerArgs are the worker flags that allocate by the rules through the
// sandbox listening on sandboxAddr (its Cobo and BitGo simulators), with
// f's keys, in batches that wait 500 ms to fill.
func (f Files) WorkerArgs(sandboxAddr string) []string {
	return []string{"-rules", f.Rules, "-cobo-api-url", "http://" + sandboxAddr + "/v2", "-cobo-api-secret-file", f.CoboSecret,
		"-bitgo-url", "http://" + sandboxAddr, "-bitgo-enterprise-id", demoEnterprise,
		"-bitgo-token-file", f.BitGoToken, "-bitgo-signing-key-file", f.BitGoKey,
		"-batch-wait", "500ms"}
}

// SandboxArgs are the sandbox flags that make it accept what a worker
// with WorkerArgs sends: f's Cobo API key, BitGo enterprise, token and
// signing key.
func (f Files) SandboxArgs() []string {
	return []string{"-api-secret-file", f.CoboSecret,
		"-bitgo-enterprise-id", demoEnterprise, "-bitgo-token-file", f.BitGoToken, "-bitgo-signing-key-file", f.BitGoKey}
}

// Run starts ingest, the workers and the sandbox, prints progress until
// ctx ends or Duration passes, then stops them in that reverse order and
// prints the final figures. A process that fails to start, or exits
// while the demo runs, ends Run with an error carrying that process's
// own last error line.
func Run(ctx context.Context, cfg Config) error {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	fl, err := Prepare(cfg.BinDir, cfg.Dir)
	if err != nil {
		return err
	}
	f := &fleet{bin: cfg.BinDir, dir: cfg.Dir, client: &http.Client{Timeout: 2 * time.Second}}
	defer f.stopAll()
	say := func(format string, a ...any) { fmt.Fprintf(cfg.Out, "demo │ "+format+"\n", a...) }
	pp := planPorts(cfg.BasePort, cfg.Workers)

	key, err := f.output("sandbox", "-print-webhook-pubkey")
	if err != nil {
		return err
	}
	say("data, keys and logs in %s/", cfg.Dir)
	say("loopback ports: %s", pp)
	dataDir := filepath.Join(cfg.Dir, "data")
	ing, err := f.start("ingest", "-listen", addr(pp.ingest), "-admin-listen", addr(pp.admin), "-nats-listen", addr(pp.nats),
		"-data-dir", dataDir, "-cobo-pubkey", key, "-log-level", "warn")
	if err != nil {
		return err
	}
	if err := f.waitReady(ctx, ing, "http://"+addr(pp.admin)+"/readyz"); err != nil {
		return err
	}
	say("ingest ready: webhooks http://%s/webhooks/cobo, admin http://%s, NATS %s", addr(pp.ingest), addr(pp.admin), addr(pp.nats))

	workerArgs := []string{"-nats-url", "nats://" + addr(pp.nats),
		"-nats-user", natsembed.UserWorker, "-nats-password-file", natsembed.PasswordFile(dataDir, natsembed.UserWorker),
		"-cobo-pubkey", key, "-log-level", "info"}
	workerArgs = append(workerArgs, fl.WorkerArgs(addr(pp.sandbox))...)
	if cfg.UndeliveredOrders > 0 {
		workerArgs = append(workerArgs, "-reconcile-every", UndeliveredReconcileEvery.String())
	}
	workers := make([]*procs.Proc, len(pp.workers))
	for i, port := range pp.workers {
		if workers[i], err = f.start(fmt.Sprintf("worker-%d", i+1), append([]string{"-metrics-listen", addr(port)}, workerArgs...)...); err != nil {
			return err
		}
	}
	var workerURLs []string
	for i, port := range pp.workers {
		if err := f.waitReady(ctx, workers[i], "http://"+addr(port)+"/readyz"); err != nil {
			return err
		}
		workerURLs = append(workerURLs, "http://"+addr(port)+"/metrics")
	}
	say("%d workers ready, metrics on %s", cfg.Workers, workerRange(pp.workers))
	if err := startConsole(ctx, f, cfg.Dir, dataDir, key, fl, pp, say); err != nil {
		return err
	}

	rate := strconv.FormatFloat(cfg.Rate, 'f', -1, 64)
	sandboxArgs := append([]string{"-listen", addr(pp.sandbox), "-webhook-url", "http://" + addr(pp.ingest) + "/webhooks/cobo",
		"-orders", strconv.Itoa(cfg.Orders), "-rate", rate, "-faults", cfg.Faults,
		"-bitgo-nonce-once=" + strconv.FormatBool(cfg.BitGoNonceOnce), "-bitgo-faults", cfg.BitGoFaults,
		"-foreign-orders", strconv.Itoa(cfg.ForeignOrders), "-undelivered-orders", strconv.Itoa(cfg.UndeliveredOrders),
		"-cobo-shape", cfg.CoboShape, "-merchants", cfg.Merchants, "-log-level", "warn"}, fl.SandboxArgs()...)
	if _, err := f.start("sandbox", sandboxArgs...); err != nil {
		return err
	}
	say("sandbox on http://%s playing %d orders at %s/s with duplicates, shuffles and late payments", addr(pp.sandbox), cfg.Orders, rate)
	say("faults %q at Cobo, %q at BitGo; Ctrl-C stops", cfg.Faults, cfg.BitGoFaults)
	if cfg.ForeignOrders > 0 {
		say("and %d orders of another Cobo customer: validly signed, our merchant ids, unknown to Cobo's order API", cfg.ForeignOrders)
	}
	if cfg.UndeliveredOrders > 0 {
		say("%d of the orders never get a webhook: the workers reconcile with Cobo every %s to complete them", cfg.UndeliveredOrders, UndeliveredReconcileEvery)
	}

	token, err := os.ReadFile(fl.BitGoToken)
	if err != nil {
		return fmt.Errorf("read bitgo token: %w", err)
	}
	sc := &scraper{client: f.client, admin: "http://" + addr(pp.admin) + "/metrics", workers: workerURLs,
		state:      "http://" + addr(pp.sandbox) + "/sandbox/state",
		bitgo:      "http://" + addr(pp.sandbox) + "/api/network/v1/enterprises/" + demoEnterprise + "/clients/allocations",
		bitgoToken: strings.TrimSpace(string(token))}
	return watch(ctx, cfg, f, sc, pp, say)
}

// watch prints progress every second while anything changes, the settled
// checks once, and the final figures when ctx ends.
func watch(ctx context.Context, cfg Config, f *fleet, sc *scraper, pp ports, say func(string, ...any)) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	prog := newProgress(time.Now())
	st := &settling{cfg: cfg}
	var last snapshot
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(cfg.Out)
			say("stopping: sandbox, workers, then ingest")
			f.stopAll()
			say("final: %d webhooks stored, %d duplicates collapsed, %d rejected; %d orders final",
				last.in.stored, last.in.dups, last.in.rejected, last.out.final())
			say("final: %d allocated, %d failed (%d refused or invalid); %d items at Cobo in %d batches, %d at BitGo",
				last.out.done, last.out.failed, last.out.refused, last.prov.items, last.prov.batches, last.prov.bitgo)
			say("final: the sandbox injected %d faults at Cobo and answered %d resent request_ids as duplicates",
				last.prov.faults, last.prov.reusedIDs)
			say("logs: %s/*.log; data in %s/data (removed at the next run)", cfg.Dir, cfg.Dir)
			return nil
		case <-tick.C:
			if err := f.exited(); err != nil {
				return err
			}
			s := sc.scrape()
			for _, l := range prog.lines(time.Now(), s) {
				fmt.Fprintln(cfg.Out, l)
			}
			for _, msg := range st.next(s, last) {
				say("%s", msg)
			}
			if st.justSettled {
				if id := completedOrderID(f.logPath("worker-1")); id != "" {
					say("look at an order: curl -s http://%s/v1/orders/%s", addr(pp.admin), id)
				}
			}
			last = s
		}
	}
}

// workerRange names the workers' ports: "127.0.0.1:9091-9092".
func workerRange(ports []int) string {
	if len(ports) == 1 {
		return addr(ports[0])
	}
	return fmt.Sprintf("%s-%d", addr(ports[0]), ports[len(ports)-1])
}

// settling decides when the run has settled and what to say then.
type settling struct {
	cfg Config
	// settled is set once the checks were said; justSettled only on the
	// tick they were.
	settled, justSettled bool
	// waitingSaid is set once the wait for undelivered orders was said.
	waitingSaid bool
}

// next returns the messages for snapshot s after prev, a second earlier.
// The run is settled when nothing changed in that second, nothing is in
// flight and every one of our orders is final, the undelivered ones
// included (reconciliation completes them).
func (st *settling) next(s, prev snapshot) []string {
	st.justSettled = false
	if st.settled || s != prev || s.out.inFlight > 0 || s.in.stored+s.in.rejected == 0 {
		return nil
	}
	if missing := st.cfg.Orders - s.out.final(); missing > 0 {
		if st.cfg.UndeliveredOrders > 0 && missing <= st.cfg.UndeliveredOrders && !st.waitingSaid {
			st.waitingSaid = true
			return []string{fmt.Sprintf("waiting for reconciliation (every %s) to complete %d orders whose webhooks never came", UndeliveredReconcileEvery, missing)}
		}
		return nil
	}
	st.settled, st.justSettled = true, true
	// Items Cobo refused (recorded failed) exist nowhere.
	held := s.out.done + s.out.failed - s.out.refused
	check := "✔ every allocation exists exactly once at Cobo or BitGo"
	if s.prov.items+s.prov.bitgo != held {
		check = fmt.Sprintf("✘ %d items at Cobo and %d at BitGo for %d recorded allocations (%d refused or invalid, held by no provider)",
			s.prov.items, s.prov.bitgo, held, s.out.refused)
	}
	msgs := []string{"settled: " + check}
	if st.cfg.UndeliveredOrders > 0 {
		check = fmt.Sprintf("✔ all %d orders final, %d repaired by reconciliation (%d never had a webhook)", st.cfg.Orders, s.in.reconciled, st.cfg.UndeliveredOrders)
		if s.in.reconciled < st.cfg.UndeliveredOrders {
			check = fmt.Sprintf("✘ all %d orders final but only %d repaired by reconciliation, while %d never had a webhook", st.cfg.Orders, s.in.reconciled, st.cfg.UndeliveredOrders)
		}
		msgs = append(msgs, "settled: "+check)
	}
	if st.cfg.ForeignOrders > 0 {
		check = fmt.Sprintf("✔ no allocation names any of the %d foreign orders", st.cfg.ForeignOrders)
		if s.foreignAllocs > 0 {
			check = fmt.Sprintf("✘ %d allocations at Cobo or BitGo name a foreign order", s.foreignAllocs)
		}
		msgs = append(msgs, "settled: "+check)
	}
	return msgs
}

// startConsole writes a random admin token, starts `worker console` as the
// operator user with the workers' rules and Cobo API (so that it can
// re-apply), and prints its URL with the token in the fragment: the page
// takes it once into the tab's sessionStorage and removes it from the
// address bar, and a fragment never reaches a server or a log.
func startConsole(ctx context.Context, f *fleet, dir, dataDir, webhookKey string, fl Files, pp ports, say func(string, ...any)) error {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("generate admin token: %w", err)
	}
	token := hex.EncodeToString(b)
	tokenFile := filepath.Join(dir, "admin-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return fmt.Errorf("write admin token: %w", err)
	}
	p, err := f.start("worker-console", "console", "-listen", addr(pp.console), "-admin-token-file", tokenFile,
		"-nats-url", "nats://"+addr(pp.nats), "-nats-user", natsembed.UserOperator, "-nats-password-file", natsembed.PasswordFile(dataDir, natsembed.UserOperator),
		"-cobo-pubkey", webhookKey, "-rules", fl.Rules, "-cobo-api-url", "http://"+addr(pp.sandbox)+"/v2", "-cobo-api-secret-file", fl.CoboSecret,
		"-ingest-admin-url", "http://"+addr(pp.admin), "-refresh", "2s", "-log-level", "warn")
	if err != nil {
		return err
	}
	if err := f.waitReady(ctx, p, "http://"+addr(pp.console)+"/readyz"); err != nil {
		return err
	}
	say("operator console: http://%s/#token=%s (the link logs you in; the token is in %s)", addr(pp.console), token, tokenFile)
	return nil
}
