// Command demo runs paystream end to end on loopback, as `make run` does:
// ingest with embedded JetStream, two workers and the provider sandbox, each
// the real binary, with live progress read from their metrics. Ctrl-C stops
// everything cleanly.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/procs"
)

func main() {
	ctx, stop := cli.SignalContext()
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

const demoRules = `{"splits": [
  {"merchant_id": "M1001", "destination_account": "developer", "share": "0.10", "description": "platform commission"},
  {"merchant_id": "*", "destination_account": "M9000", "share": "0.05", "description": "referral"},
  {"merchant_id": "*", "destination_account": "bitgo:demo-connection", "share": "0.02", "description": "BitGo settlement"}],
 "late_payments": "credit_merchant"}
`

// Loopback addresses the demo uses; the README lists them.
const (
	ingestAddr  = "127.0.0.1:8080"
	adminAddr   = "127.0.0.1:8081"
	natsAddr    = "127.0.0.1:4222"
	sandboxAddr = "127.0.0.1:9000"
	workerBase  = 9091
)

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := cli.NewFlags("demo", getenv, stdout)
	binDir := fs.String("bin", "PAYSTREAM_DEMO_BIN", "bin", "directory holding the built binaries")
	dir := fs.String("dir", "PAYSTREAM_DEMO_DIR", ".run", "working directory for data, keys and logs (recreated)")
	orders := fs.Int("orders", "PAYSTREAM_DEMO_ORDERS", 200, "orders the sandbox plays")
	foreign := fs.Int("foreign-orders", "PAYSTREAM_DEMO_FOREIGN_ORDERS", 0, "orders of another Cobo customer the sandbox plays too (validly signed, unknown to Cobo's order API); none may be allocated")
	rate := fs.String("rate", "PAYSTREAM_DEMO_RATE", "20", "orders started per second")
	workers := fs.Int("workers", "PAYSTREAM_DEMO_WORKERS", 2, "worker processes")
	faults := fs.String("faults", "PAYSTREAM_DEMO_FAULTS", "500:2,lose:2,ratelimit:1", "faults the sandbox injects into batch allocations: 500, lose, timeout, slow, ratelimit, unauthorized (401: items wait, then complete), 30001 (pricing plan, no batch behind it: items fail after the lookup), each kind[:count[:delay]]")
	coboShape := fs.String("cobo-shape", "PAYSTREAM_DEMO_COBO_SHAPE", "current", "the sandbox's batch allocation answers: current, or seed (no status fields, as the reference seeds)")
	merchants := fs.String("merchants", "PAYSTREAM_DEMO_MERCHANTS", "M1001,M1002,M1003", "merchants the sandbox's orders belong to; add M9000 to have its referral split be a transfer to itself, which Cobo refuses")
	bitgoFaults := fs.String("bitgo-faults", "PAYSTREAM_DEMO_BITGO_FAULTS", "error500:2,lose:2,reserved:2", "faults the sandbox injects into BitGo allocations")
	bitgoNonceOnce := fs.Bool("bitgo-nonce-once", "PAYSTREAM_DEMO_BITGO_NONCE_ONCE", false, "the sandbox refuses any BitGo nonce it has seen, even in a byte-for-byte resend")
	duration := fs.Duration("duration", "PAYSTREAM_DEMO_DURATION", 0, "stop after this long; 0 runs until Ctrl-C")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	d := &demo{bin: *binDir, dir: *dir, out: stdout}
	if err := d.prepare(); err != nil {
		return err
	}
	defer d.stopAll()

	say := func(format string, a ...any) { fmt.Fprintf(stdout, "demo │ "+format+"\n", a...) }
	key, err := d.output("sandbox", "-print-webhook-pubkey")
	if err != nil {
		return err
	}
	say("data, keys and logs in %s/", d.dir)
	if err := d.start("ingest", "-listen", ingestAddr, "-admin-listen", adminAddr, "-nats-listen", natsAddr,
		"-data-dir", filepath.Join(d.dir, "data"), "-cobo-pubkey", key, "-log-level", "warn"); err != nil {
		return err
	}
	if err := waitReady(ctx, "http://"+adminAddr+"/readyz"); err != nil {
		return fmt.Errorf("ingest: %w (see %s)", err, d.logPath("ingest"))
	}
	say("ingest ready: webhooks on http://%s/webhooks/cobo, admin on http://%s, embedded JetStream on %s", ingestAddr, adminAddr, natsAddr)
	var workerURLs []string
	for i := range *workers {
		addr := fmt.Sprintf("127.0.0.1:%d", workerBase+i)
		workerURLs = append(workerURLs, "http://"+addr+"/metrics")
		if err := d.start(fmt.Sprintf("worker-%d", i+1), "-nats-url", "nats://"+natsAddr, "-metrics-listen", addr,
			"-nats-user", natsembed.UserWorker, "-nats-password-file", natsembed.PasswordFile(filepath.Join(d.dir, "data"), natsembed.UserWorker),
			"-cobo-pubkey", key,
			"-rules", d.rules, "-cobo-api-url", "http://"+sandboxAddr+"/v2", "-cobo-api-secret-file", d.secret,
			"-bitgo-url", "http://"+sandboxAddr, "-bitgo-enterprise-id", demoEnterprise,
			"-bitgo-token-file", d.bitgoToken, "-bitgo-signing-key-file", d.bitgoKey,
			"-batch-wait", "500ms", "-log-level", "info"); err != nil {
			return err
		}
	}
	for _, u := range workerURLs {
		if err := waitReady(ctx, strings.TrimSuffix(u, "/metrics")+"/readyz"); err != nil {
			return fmt.Errorf("worker: %w (see %s/worker-*.log)", err, d.dir)
		}
	}
	say("%d workers ready (metrics on 127.0.0.1:%d..)", *workers, workerBase)
	if err := d.startConsole(ctx, key, say); err != nil {
		return err
	}
	if err := d.start("sandbox", "-listen", sandboxAddr, "-webhook-url", "http://"+ingestAddr+"/webhooks/cobo",
		"-api-secret-file", d.secret, "-orders", strconv.Itoa(*orders), "-rate", *rate, "-faults", *faults,
		"-bitgo-enterprise-id", demoEnterprise, "-bitgo-token-file", d.bitgoToken, "-bitgo-signing-key-file", d.bitgoKey,
		"-bitgo-nonce-once="+strconv.FormatBool(*bitgoNonceOnce),
		"-bitgo-faults", *bitgoFaults, "-foreign-orders", strconv.Itoa(*foreign), "-cobo-shape", *coboShape, "-merchants", *merchants,
		"-log-level", "warn"); err != nil {
		return err
	}
	say("Cobo and BitGo sandbox on http://%s playing %d orders at %s/s with duplicates, shuffles, late payments and faults %q (Cobo), %q (BitGo); Ctrl-C stops",
		sandboxAddr, *orders, *rate, *faults, *bitgoFaults)
	if *foreign > 0 {
		say("and %d orders of another Cobo customer: validly signed, our merchant ids, but unknown to Cobo's order API", *foreign)
	}

	token, err := os.ReadFile(d.bitgoToken)
	if err != nil {
		return fmt.Errorf("read bitgo token: %w", err)
	}
	p := &progress{out: stdout, admin: "http://" + adminAddr + "/metrics", workers: workerURLs, sandbox: "http://" + sandboxAddr + "/sandbox/state",
		bitgo: "http://" + sandboxAddr + "/api/network/v1/enterprises/" + demoEnterprise + "/clients/allocations", bitgoToken: strings.TrimSpace(string(token))}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start := time.Now()
	settled := false
	var last snapshot
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(stdout)
			say("stopping: sandbox, workers, then ingest")
			d.stopAll()
			say("final: %d webhooks stored (%d duplicates collapsed), %d orders final, %d allocations done, %d failed (%d never made: refused or invalid), %d at Cobo in %d batches, %d at BitGo",
				last.stored, last.dups, last.ordersFinal, last.allocated, last.failed, last.refused, last.items, last.batches, last.bitgoAllocs)
			say("logs: %s/*.log; data in %s/data (removed at the next run)", d.dir, d.dir)
			return nil
		case <-tick.C:
			s := p.scrape()
			if s != last || time.Since(p.printedAt) >= 10*time.Second {
				p.print(time.Since(start), s, last)
			}
			if !settled && s.ordersFinal > 0 && s.inFlight == 0 && s == last {
				settled = true
				// Items Cobo refused (recorded failed) exist nowhere.
				check := "✔ every allocation exists exactly once at Cobo or BitGo"
				if s.items+s.bitgoAllocs != s.allocated+s.failed-s.refused {
					check = fmt.Sprintf("✘ %d items at Cobo and %d at BitGo for %d recorded allocations (%d refused or invalid, held by no provider)", s.items, s.bitgoAllocs, s.allocated+s.failed-s.refused, s.refused)
				}
				say("settled: %s", check)
				if *foreign > 0 {
					check = fmt.Sprintf("✔ no allocation names any of the %d foreign orders", *foreign)
					if s.foreignAllocs > 0 {
						check = fmt.Sprintf("✘ %d allocations at Cobo or BitGo name a foreign order", s.foreignAllocs)
					}
					say("settled: %s", check)
				}
				if id := completedOrderID(d.logPath("worker-1")); id != "" {
					say("look at an order: curl -s http://%s/v1/orders/%s", adminAddr, id)
				}
			}
			last = s
		}
	}
}

// demoEnterprise is the BitGo enterprise the demo's sandbox serves.
const demoEnterprise = "demo-enterprise"

type demo struct {
	bin, dir, secret, rules string
	bitgoToken, bitgoKey    string
	out                     io.Writer
	procs                   []*procs.Proc
}

func (d *demo) logPath(name string) string { return filepath.Join(d.dir, name+".log") }

// prepare recreates the working directory with a fresh API key and rules.
func (d *demo) prepare() error {
	for _, b := range []string{"ingest", "worker", "sandbox"} {
		if _, err := os.Stat(filepath.Join(d.bin, b)); err != nil {
			return fmt.Errorf("binary %s missing in %s: run make build", b, d.bin)
		}
	}
	if err := os.RemoveAll(d.dir); err != nil {
		return fmt.Errorf("clean %s: %w", d.dir, err)
	}
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", d.dir, err)
	}
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		return fmt.Errorf("generate api key: %w", err)
	}
	d.secret = filepath.Join(d.dir, "cobo-api-secret")
	if err := os.WriteFile(d.secret, []byte(hex.EncodeToString(seed)+"\n"), 0o600); err != nil {
		return fmt.Errorf("write api secret: %w", err)
	}
	// The BitGo access token and signing key are random per run, like the
	// Cobo key: the sandbox is given the same files to check them.
	for _, f := range []struct {
		path *string
		name string
	}{{&d.bitgoToken, "bitgo-token"}, {&d.bitgoKey, "bitgo-signing-key"}} {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return fmt.Errorf("generate %s: %w", f.name, err)
		}
		*f.path = filepath.Join(d.dir, f.name)
		if err := os.WriteFile(*f.path, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	d.rules = filepath.Join(d.dir, "rules.json")
	if err := os.WriteFile(d.rules, []byte(demoRules), 0o600); err != nil {
		return fmt.Errorf("write rules: %w", err)
	}
	return nil
}

func (d *demo) output(name string, args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(d.bin, name), args...).Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

func (d *demo) start(name string, args ...string) error {
	bin := name
	if i := strings.IndexByte(name, '-'); i > 0 {
		bin = name[:i]
	}
	p, err := procs.Start(name, filepath.Join(d.bin, bin), args, d.logPath(name), 300*time.Millisecond)
	if err != nil {
		return err
	}
	d.procs = append(d.procs, p)
	return nil
}

// stopAll stops the sandbox first, then the workers, then ingest.
// Each is stopped softly (SIGINT), then hard after 15 s. Calling it again
// does nothing.
func (d *demo) stopAll() {
	for _, prefix := range []string{"sandbox", "worker", "ingest"} {
		for _, p := range d.procs {
			if strings.HasPrefix(p.Name, prefix) {
				p.Stop(15 * time.Second)
			}
		}
	}
	d.procs = nil
}

func waitReady(ctx context.Context, url string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return errors.New("not ready after 20s: " + url)
}

type snapshot struct {
	stored, dups, rejected                  int
	events                                  int
	completed, expired, underpaid           int
	planned, allocated, failed, inFlight    int
	refused, waiting, stuck                 int // failed and held by no provider (refused, or invalid when planned); batches waiting, items stuck
	ordersFinal                             int
	batches, items, dupRequests, faultsUsed int
	bitgoAllocs                             int
	foreignAllocs                           int // Cobo items and BitGo allocations naming a foreign order
}

type progress struct {
	out     io.Writer
	admin   string
	workers []string
	sandbox string
	// bitgo lists the sandbox's BitGo allocations with bitgoToken.
	bitgo, bitgoToken string
	printedAt         time.Time
}

// scrape reads every process's metrics into one snapshot.
func (p *progress) scrape() snapshot {
	var s snapshot
	ing := scrape(p.admin)
	s.stored = int(ing.sum(`paystream_webhook_requests_total{code="200"}`)) - int(ing.sum("paystream_webhook_duplicates_total"))
	s.dups = int(ing.sum("paystream_webhook_duplicates_total"))
	s.rejected = int(ing.sumPrefix("paystream_webhook_requests_total")) - s.stored - s.dups
	for _, u := range p.workers {
		w := scrape(u)
		s.events += int(w.sumPrefix("paystream_worker_events_total"))
		s.completed += int(w.sum(`paystream_order_transitions_total{status="Completed"}`))
		s.expired += int(w.sum(`paystream_order_transitions_total{status="Expired"}`))
		s.underpaid += int(w.sum(`paystream_order_transitions_total{status="Underpaid"}`))
		s.planned += int(w.sum(`paystream_allocation_items_total{backend="cobo",status="planned"}`) + w.sum(`paystream_allocation_items_total{backend="bitgo",status="planned"}`))
		s.allocated += int(w.sum(`paystream_allocation_items_total{backend="cobo",status="completed"}`) + w.sum(`paystream_allocation_items_total{backend="bitgo",status="completed"}`))
		s.failed += int(w.sum(`paystream_allocation_items_total{backend="cobo",status="failed"}`) + w.sum(`paystream_allocation_items_total{backend="bitgo",status="failed"}`))
		s.refused += int(w.sum(`paystream_allocation_items_refused_total{backend="cobo"}`) + w.sum(`paystream_allocation_items_refused_total{backend="bitgo"}`))
		// Gauges every worker computes over all batches: take the largest.
		s.waiting = max(s.waiting, int(w.sumPrefix("paystream_allocation_batches_waiting")))
		s.stuck = max(s.stuck, int(w.sum("paystream_allocation_items_stuck")))
	}
	s.inFlight = max(0, s.planned-s.allocated-s.failed)
	s.ordersFinal = s.completed + s.expired + s.underpaid
	if resp, err := http.Get(p.sandbox); err == nil {
		var st struct {
			Batches           int `json:"batches"`
			Items             int `json:"items"`
			DuplicateRequests int `json:"duplicate_requests"`
			FaultsApplied     int `json:"faults_applied"`
			ForeignItems      int `json:"foreign_order_items"`
			ForeignBitGo      int `json:"foreign_order_bitgo_allocations"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		s.batches, s.items, s.dupRequests, s.faultsUsed = st.Batches, st.Items, st.DuplicateRequests, st.FaultsApplied
		s.foreignAllocs = st.ForeignItems + st.ForeignBitGo
	}
	if req, err := http.NewRequest(http.MethodGet, p.bitgo, nil); err == nil {
		req.Header.Set("Authorization", "Bearer "+p.bitgoToken)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			var list struct {
				Allocations []json.RawMessage `json:"allocations"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&list)
			resp.Body.Close()
			s.bitgoAllocs = len(list.Allocations)
		}
	}
	return s
}

// print writes one progress line; the event rate is since the last line.
func (p *progress) print(elapsed time.Duration, s, prev snapshot) {
	rate := 0.0
	if !p.printedAt.IsZero() {
		rate = float64(s.events-prev.events) / time.Since(p.printedAt).Seconds()
	}
	p.printedAt = time.Now()
	fmt.Fprintf(p.out, "%4.0fs │ webhooks %5d stored %4d dup %3d rejected │ events %6d %5.0f/s │ orders %4d completed %3d expired %3d underpaid │ allocations %4d done %2d failed (%d refused) %3d in flight, %d batches waiting, %d stuck │ Cobo %3d batches %4d items, %d faults injected, %d duplicate request_ids │ BitGo %3d\n",
		elapsed.Seconds(), s.stored, s.dups, s.rejected, s.events, rate, s.completed, s.expired, s.underpaid,
		s.allocated, s.failed, s.refused, s.inFlight, s.waiting, s.stuck, s.batches, s.items, s.faultsUsed, s.dupRequests, s.bitgoAllocs)
}

// metrics is a scraped Prometheus text exposition, series -> value.
type metrics map[string]float64

func scrape(url string) metrics {
	m := metrics{}
	resp, err := http.Get(url)
	if err != nil {
		return m
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

func (m metrics) sum(series string) float64 { return m[series] }

func (m metrics) sumPrefix(name string) float64 {
	t := 0.0
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			t += v
		}
	}
	return t
}

// completedOrderID returns an order id a worker logged as completed.
func completedOrderID(logPath string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var line struct {
			OrderID string `json:"order_id"`
			Message string `json:"message"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Message == "order completed" && line.OrderID != "" {
			return line.OrderID
		}
	}
	return ""
}
