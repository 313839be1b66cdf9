// Package benchrun measures paystream against its real binaries on
// loopback and writes the results into BENCHMARKS.md: ingest throughput
// and latency (saturation and a fixed offered rate) with the load
// generator, the ceilings it sits under (Ed25519 verification and
// JetStream synchronous publish, from the Go benchmarks), worker
// throughput with 1, 2 and 4 workers, allocation throughput, recovery
// after a worker is killed with SIGKILL under load, and memory over a
// soak. `make bench` runs it; every phase is bounded in count and time.
package benchrun

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/cli"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/loadgen"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/procs"
)

// Markers delimit the generated part of BENCHMARKS.md; text outside them
// (the analysis) is kept.
const (
	beginMarker = "<!-- benchrun:begin -->"
	endMarker   = "<!-- benchrun:end -->"
)

// Options sizes a run; `bin/benchrun -h` says what each does.
type Options struct {
	// Bin holds the built binaries; Dir is the working directory (its
	// "run" subdirectory is recreated); Out is the file whose generated
	// section is rewritten; GoBenchFile is `go test -bench` output.
	Bin, Dir, Out, GoBenchFile string
	// SaturationN webhooks are sent with Concurrency in flight; FixedN at
	// Rate per second.
	SaturationN, FixedN, Rate int
	Concurrency               int
	// WorkerEvents is how many events each worker run drains.
	WorkerEvents int
	// Reps is how many times the durable-publish ceilings and the worker
	// drains run, in turns with what they are compared with; the report
	// gives medians. An odd number makes every median a run that
	// happened.
	Reps int
	// BaselineBin, when set, holds the worker of an earlier revision
	// (BaselineRev names it), which drains the same events after each
	// worker run: the CPU per event of both, measured in one run.
	BaselineBin, BaselineRev string
	// Soak is how long the soak runs, at SoakRate webhooks per second.
	Soak     time.Duration
	SoakRate int
	// SoakDefaultWindows soaks with the default dedup window (24 h),
	// stream max age (30 days) and retention (90 days) instead of short
	// ones (SoakWindows), which fill within minutes, so that the memory
	// they bound is seen to stop growing.
	SoakDefaultWindows bool
	// RecoveryOrders are played by the sandbox at RecoveryRate per second
	// to two workers with allocation rules, one killed with SIGKILL (see
	// recovery); 0 skips the measurement.
	RecoveryOrders, RecoveryRate int
}

// Run measures, printing progress to stdout, and rewrites o.Out.
func Run(ctx context.Context, o Options, stdout io.Writer) error {
	say := func(format string, a ...any) { fmt.Fprintf(stdout, "bench │ "+format+"\n", a...) }
	o.Reps = max(o.Reps, 1)
	r := &report{Date: time.Now().UTC(), Machine: machine(), Opts: o}
	var err error
	// Read before the working directory is recreated: it may live there.
	if r.GoBench, err = parseGoBench(o.GoBenchFile); err != nil {
		say("no Go benchmark results (%v); run `make bench`", err)
	}
	o.Dir = filepath.Join(o.Dir, "run")
	if err := os.RemoveAll(o.Dir); err != nil {
		return fmt.Errorf("clean %s: %w", o.Dir, err)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", o.Dir, err)
	}
	key := loadgen.KeyFromSeed(loadgen.DefaultSeed)

	b := &bench{o: o, say: say}
	defer b.stopAll()
	sat := func(url, runID string) (loadgen.Result, error) {
		return loadgen.Run(ctx, loadgen.Options{URL: url, Key: key, N: o.SaturationN, Duration: 2 * time.Minute, Concurrency: o.Concurrency, RunID: runID, Presign: true})
	}

	// The ceilings, each driven by the same load as ingest in this run.
	// Verify-only: ingest's HTTP stack and verifier, storing nothing.
	vURL, vProc, err := b.startVerifyOnly()
	if err != nil {
		return err
	}
	say("verify-only ceiling: %d webhooks, %d in flight", o.SaturationN, o.Concurrency)
	vcpu0, err := vProc.CPU()
	if err != nil {
		return err
	}
	if r.VerifyOnly, err = sat(vURL, "verify"); err != nil {
		return err
	}
	vcpu1, err := vProc.CPU()
	if err != nil {
		return err
	}
	r.VerifyOnlyCPUus = float64((vcpu1 - vcpu0).Microseconds()) / float64(max(r.VerifyOnly.Sent, 1))
	vProc.Stop(15 * time.Second)
	say("  %.0f answered/s, CPU %.0f µs per webhook", r.VerifyOnly.PerSecond, r.VerifyOnlyCPUus)
	// Durable publish: concurrent fsync-always publishes of the same
	// payloads, one by one and group-committed, Reps times each in turns
	// (a disk's fsync time drifts; paired runs and the median ratio
	// stand against that); and lazy once, for reference.
	ceiling := func(name string, sync time.Duration, group bool) (PublishCeiling, error) {
		say("%s ceiling: %d publishes, %d in flight", name, o.SaturationN, o.Concurrency)
		c, err := publishCeiling(ctx, o.Dir, name, o.SaturationN, o.Concurrency, sync, group)
		if err == nil {
			say("  %.0f stored/s, CPU %.0f µs per message", c.PerSecond, c.CPUus)
		}
		return c, err
	}
	for rep := range o.Reps {
		var pair [2]PublishCeiling
		for _, k := range turns(rep) {
			name := []string{"publish-always", "publish-always-group"}[k]
			if pair[k], err = ceiling(fmt.Sprintf("%s-%d", name, rep+1), 0, k == 1); err != nil {
				return err
			}
		}
		r.PublishAlwaysRuns = append(r.PublishAlwaysRuns, pair[0])
		r.PublishGroupRuns = append(r.PublishGroupRuns, pair[1])
	}
	r.PublishAlways, r.PublishGroup = medianCeiling(r.PublishAlwaysRuns), medianCeiling(r.PublishGroupRuns)
	if r.PublishLazy, err = ceiling("publish-lazy", lazySyncInterval, false); err != nil {
		return err
	}
	// The durable write rate the workers' compare-and-sets share, at one
	// and at two workers' events in flight.
	for _, inFlight := range []int{events.DefaultConcurrency, 2 * events.DefaultConcurrency} {
		say("key-value write ceiling: %d creates, %d in flight", o.SaturationN, inFlight)
		c, err := kvCeiling(ctx, o.Dir, o.SaturationN, inFlight)
		if err != nil {
			return err
		}
		r.KVCeilings = append(r.KVCeilings, c)
		say("  %.0f writes/s", c.PerSecond)
	}

	// Ingest: saturation, then the fixed rate, against one process.
	ing, err := b.startIngest("ingest", nil)
	if err != nil {
		return err
	}
	say("ingest at saturation: %d webhooks, %d in flight", o.SaturationN, o.Concurrency)
	cpu0, err := ing.proc.CPU()
	if err != nil {
		return err
	}
	if r.Saturation, err = sat(ing.webhookURL, "sat"); err != nil {
		return err
	}
	cpu1, err := ing.proc.CPU()
	if err != nil {
		return err
	}
	r.IngestCPUus = float64((cpu1 - cpu0).Microseconds()) / float64(max(r.Saturation.Sent, 1))
	say("  %.0f stored/s, p50 %.1f ms, p99 %.1f ms; CPU per webhook: ingest %.0f µs, load generator %.0f µs",
		r.Saturation.PerSecond, r.Saturation.P50ms, r.Saturation.P99ms, r.IngestCPUus, r.Saturation.CPUus)
	// The same without group commit: what it buys.
	single, err := b.startIngest("ingest-single", nil, "-group-commit", ingest.GroupCommitOff)
	if err != nil {
		return err
	}
	say("ingest at saturation with -group-commit off: %d webhooks, %d in flight", o.SaturationN, o.Concurrency)
	if r.SaturationSingle, err = sat(single.webhookURL, "sat-single"); err != nil {
		return err
	}
	single.proc.Stop(15 * time.Second)
	say("  %.0f stored/s, p50 %.1f ms, p99 %.1f ms", r.SaturationSingle.PerSecond, r.SaturationSingle.P50ms, r.SaturationSingle.P99ms)
	// The same saturation with the lazy fsync an operator may choose
	// (-store-sync 2m): what durability costs, measured side by side.
	lazy, err := b.startIngest("ingest-lazy", nil, "-store-sync", lazySync)
	if err != nil {
		return err
	}
	say("ingest at saturation with -store-sync %s: %d webhooks, %d in flight", lazySync, o.SaturationN, o.Concurrency)
	if r.SaturationLazy, err = sat(lazy.webhookURL, "sat-lazy"); err != nil {
		return err
	}
	lazy.proc.Stop(15 * time.Second)
	say("  %.0f stored/s, p50 %.1f ms, p99 %.1f ms", r.SaturationLazy.PerSecond, r.SaturationLazy.P50ms, r.SaturationLazy.P99ms)
	say("ingest at %d/s offered: %d webhooks", o.Rate, o.FixedN)
	if r.Fixed, err = loadgen.Run(ctx, loadgen.Options{URL: ing.webhookURL, Key: key, N: o.FixedN, Duration: 2 * time.Minute, Concurrency: 512, Rate: o.Rate, RunID: "fixed"}); err != nil {
		return err
	}
	say("  %.0f stored/s, p50 %.1f ms, p99 %.1f ms", r.Fixed.PerSecond, r.Fixed.P50ms, r.Fixed.P99ms)

	// Workers: the same stored events drained by 1, 2 and 4 workers, each
	// run from an empty consumer and an empty orders bucket, Reps times.
	stored := int(r.Saturation.Stored + r.Fixed.Stored)
	// With a baseline, its workers drain the same events right before or
	// after (in turns), so that CPU per event is compared in pairs.
	for _, n := range []int{1, 2, 4} {
		s := WorkerSeries{Workers: n}
		for rep := range o.Reps {
			for _, k := range turns(rep) {
				if k == 0 {
					res, err := b.drain(ctx, ing, o.Bin, n, min(stored, o.WorkerEvents))
					if err != nil {
						return fmt.Errorf("%d workers: %w", n, err)
					}
					s.Runs = append(s.Runs, res)
					say("  %d worker(s): %d events in %.2fs, %.0f events/s; CPU per event: workers %.0f µs, JetStream server %.0f µs",
						n, res.Events, res.Seconds, res.PerSecond, res.WorkerCPUus, res.ServerCPUus)
					continue
				}
				if o.BaselineBin == "" {
					continue
				}
				base, err := b.drain(ctx, ing, o.BaselineBin, n, min(stored, o.WorkerEvents))
				if err != nil {
					return fmt.Errorf("%d baseline workers: %w", n, err)
				}
				s.Baseline = append(s.Baseline, base)
				say("  %d baseline worker(s) (%s): %.0f events/s; CPU per event: workers %.0f µs, JetStream server %.0f µs",
					n, o.BaselineRev, base.PerSecond, base.WorkerCPUus, base.ServerCPUus)
			}
		}
		r.Workers = append(r.Workers, s)
	}
	ing.proc.Stop(15 * time.Second)

	// Recovery: a worker killed with SIGKILL under load with allocations.
	if o.RecoveryOrders > 0 {
		if r.Recovery, err = b.recovery(ctx); err != nil {
			return fmt.Errorf("recovery: %w", err)
		}
	}

	// Soak: a fresh ingest and two workers under a steady load.
	if o.Soak > 0 {
		say("soak: %s at %d/s with 2 workers", o.Soak, o.SoakRate)
		if r.Soak, err = b.soak(ctx); err != nil {
			return fmt.Errorf("soak: %w", err)
		}
		for _, p := range r.Soak.Procs {
			say("  %s RSS %.1f MiB → %.1f MiB (peak %.1f MiB)", p.Name, mib(p.Start), mib(p.End), mib(p.Peak))
		}
	}
	if err := r.write(o.Out); err != nil {
		return err
	}
	say("wrote %s", o.Out)
	if p := r.Recovery.Problem; p != "" {
		return fmt.Errorf("recovery: %s", p)
	}
	return nil
}

// turns is the order of a pair's two runs in repetition rep: 0 then 1,
// then the other way round, so that a drift of the machine (a disk's
// fsync time, another tenant) does not always favour the same one.
func turns(rep int) [2]int {
	if rep%2 == 1 {
		return [2]int{1, 0}
	}
	return [2]int{0, 1}
}

// lazySync is the -store-sync interval of the lazy-fsync measurement:
// JetStream's own default.
const (
	lazySync         = "2m"
	lazySyncInterval = 2 * time.Minute
)

type bench struct {
	o     Options
	say   func(string, ...any)
	procs []*procs.Proc
}

func (b *bench) stopAll() {
	// Workers before ingest, which hosts the embedded JetStream server.
	for i := len(b.procs) - 1; i >= 0; i-- {
		b.procs[i].Stop(15 * time.Second)
	}
	b.procs = nil
}

type ingestProc struct {
	proc       *procs.Proc
	webhookURL string
	natsURL    string
	// dataDir holds the credentials of the embedded server ingest runs or
	// stores on.
	dataDir string
}

// loginFlags are the flags that log a paystream process in to the
// embedded server as user.
func (ip *ingestProc) loginFlags(user string) []string {
	return []string{"-nats-url", ip.natsURL, "-nats-user", user, "-nats-password-file", natsembed.PasswordFile(ip.dataDir, user)}
}

// connect logs the benchmark itself in as user.
func (ip *ingestProc) connect(user string) (*nats.Conn, error) {
	pw, err := cli.ReadSecretFile(natsembed.PasswordFile(ip.dataDir, user))
	if err != nil {
		return nil, err
	}
	return nats.Connect(ip.natsURL, nats.UserInfo(user, pw), nats.CustomInboxPrefix(natsembed.InboxPrefix(user)))
}

// startIngest starts an ingest with its embedded JetStream server, or,
// with host, one that stores on host's server as the ingest user.
func (b *bench) startIngest(name string, host *ingestProc, extra ...string) (*ingestProc, error) {
	listen, admin := freeAddr(), freeAddr()
	args := append([]string{"-listen", listen, "-admin-listen", admin, "-cobo-pubkey", LoadgenPubKey(), "-log-level", "warn"}, extra...)
	var natsURL, dataDir string
	if host == nil {
		natsAddr := freeAddr()
		natsURL, dataDir = "nats://"+natsAddr, filepath.Join(b.o.Dir, name+"-data")
		args = append(args, "-nats-listen", natsAddr, "-data-dir", dataDir)
	} else {
		natsURL, dataDir = host.natsURL, host.dataDir
		args = append(args, host.loginFlags(natsembed.UserIngest)...)
	}
	p, err := procs.Start(name, filepath.Join(b.o.Bin, "ingest"), args, filepath.Join(b.o.Dir, name+".log"), 500*time.Millisecond)
	if err != nil {
		return nil, err
	}
	b.procs = append(b.procs, p)
	ip := &ingestProc{proc: p, webhookURL: "http://" + listen + "/webhooks/cobo", natsURL: natsURL, dataDir: dataDir}
	if err := waitTCP(listen, 10*time.Second); err != nil {
		return nil, fmt.Errorf("%s: %w (see %s)", name, err, p.Log)
	}
	return ip, nil
}

// WorkerResult is one worker-throughput run.
type WorkerResult struct {
	Workers   int
	Events    int
	Seconds   float64
	PerSecond float64
	// WorkerCPUus is the workers' user+system CPU over the timed window
	// per event, all worker processes summed; ServerCPUus is the
	// JetStream server's (the ingest process hosting it) over the same
	// window.
	WorkerCPUus, ServerCPUus float64
}

// drain resets the worker consumer and the orders bucket, starts n
// workers, and measures how fast they commit and ack want events, and
// the CPU the workers and the JetStream server spend on each. The clock
// starts once 1% is acked, so process start-up is not counted.
func (b *bench) drain(ctx context.Context, ing *ingestProc, bin string, n, want int) (WorkerResult, error) {
	// Resetting the consumer and the bucket is an admin's change.
	nc, err := ing.connect(natsembed.UserAdmin)
	if err != nil {
		return WorkerResult{}, fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return WorkerResult{}, err
	}
	if err := js.DeleteConsumer(ctx, events.StreamName, events.ConsumerName); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return WorkerResult{}, fmt.Errorf("reset consumer: %w", err)
	}
	if s, err := js.Stream(ctx, "KV_"+events.OrdersBucket); err == nil {
		if err := s.Purge(ctx); err != nil {
			return WorkerResult{}, fmt.Errorf("reset orders: %w", err)
		}
	}
	stream, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		return WorkerResult{}, err
	}
	total := int(stream.CachedInfo().State.Msgs)
	want = min(want, total)
	var ws []*procs.Proc
	defer func() {
		for _, w := range ws {
			w.Stop(15 * time.Second)
		}
	}()
	for i := range n {
		name := fmt.Sprintf("worker-%d-of-%d", i+1, n)
		if bin != b.o.Bin {
			name = "baseline-" + name
		}
		w, _, err := b.startWorkerFrom(bin, ing, name, 0)
		if err != nil {
			return WorkerResult{}, err
		}
		ws = append(ws, w)
	}
	// cpu sums the workers' user+system time, then the server's.
	cpu := func() (workers, server time.Duration, err error) {
		for _, w := range ws {
			c, err := w.CPU()
			if err != nil {
				return 0, 0, fmt.Errorf("%s CPU: %w", w.Name, err)
			}
			workers += c
		}
		server, err = ing.proc.CPU()
		if err != nil {
			return 0, 0, fmt.Errorf("%s CPU: %w", ing.proc.Name, err)
		}
		return workers, server, nil
	}
	var t0 time.Time
	var acked0 int
	var wcpu0, scpu0 time.Duration
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return WorkerResult{}, ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
		cons, err := js.Consumer(ctx, events.StreamName, events.ConsumerName)
		if err != nil {
			continue // the workers are still creating it
		}
		info, err := cons.Info(ctx)
		if err != nil {
			continue
		}
		acked := int(info.AckFloor.Consumer)
		if t0.IsZero() && acked >= max(1, total/100) {
			if wcpu0, scpu0, err = cpu(); err != nil {
				return WorkerResult{}, err
			}
			t0, acked0 = time.Now(), acked
		}
		if !t0.IsZero() && acked >= total {
			secs := time.Since(t0).Seconds()
			wcpu1, scpu1, err := cpu()
			if err != nil {
				return WorkerResult{}, err
			}
			events := total - acked0
			perEvent := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(max(events, 1)) }
			return WorkerResult{Workers: n, Events: events, Seconds: secs, PerSecond: float64(events) / secs,
				WorkerCPUus: perEvent(wcpu1 - wcpu0), ServerCPUus: perEvent(scpu1 - scpu0)}, nil
		}
	}
	return WorkerResult{}, fmt.Errorf("%d workers did not drain %d events within 5 minutes", n, total)
}

// ProcMemory is one process's RSS over the soak.
type ProcMemory struct {
	Name             string
	Start, End, Peak int64
}

// SoakResult is the soak's load and memory.
type SoakResult struct {
	Duration time.Duration
	Load     loadgen.Result
	Procs    []ProcMemory
	// Windows are the windows the soak ran with; zero for the defaults.
	Windows SoakWindows
	// Series is every process's RSS (in Procs' order) once a minute.
	Series []SoakSample
}

// SoakSample is the processes' RSS At into the soak.
type SoakSample struct {
	At  time.Duration
	RSS []int64
}

// SoakWindows are the short windows of a soak: everything the server
// keeps per event or per order is gone again after Full.
type SoakWindows struct {
	Dedup, MaxAge, Retention time.Duration
}

// Full is when the windows are full: an order settled at the start
// expires Retention after its last change and its marker (kept as long as
// the retention, at most an hour) MarkerTTL after that.
func (w SoakWindows) Full() time.Duration {
	return max(w.Dedup, w.MaxAge) + w.Retention + events.Retention{Keep: w.Retention}.WithDefaults().MarkerTTL()
}

// shortWindows fill within minutes: a 30 s dedup window, 1 m stream max
// age and 90 s retention (it must exceed the max age): full after 4 m.
var shortWindows = SoakWindows{Dedup: 30 * time.Second, MaxAge: time.Minute, Retention: 90 * time.Second}

func (b *bench) soak(ctx context.Context) (SoakResult, error) {
	key := loadgen.KeyFromSeed(loadgen.DefaultSeed)
	// The JetStream server runs in a process of its own (an ingest with
	// its embedded server that gets no webhooks), so that the memory of
	// ingest's own code and that of the server's indexes are told apart.
	res := SoakResult{Duration: b.o.Soak}
	var streamFlags, workerFlags []string
	if !b.o.SoakDefaultWindows {
		res.Windows = shortWindows
		streamFlags = []string{"-dedup-window", shortWindows.Dedup.String(), "-stream-max-age", shortWindows.MaxAge.String()}
		workerFlags = []string{"-retention", shortWindows.Retention.String()}
	}
	host, err := b.startIngest("soak-nats", nil, streamFlags...)
	if err != nil {
		return SoakResult{}, err
	}
	ing, err := b.startIngest("soak-ingest", host, streamFlags...)
	if err != nil {
		return SoakResult{}, err
	}
	all := []*procs.Proc{host.proc, ing.proc}
	for i := range 2 {
		name := fmt.Sprintf("soak-worker-%d", i+1)
		w, _, err := b.startWorker(ing, name, 300*time.Millisecond, workerFlags...)
		if err != nil {
			return SoakResult{}, err
		}
		b.procs = append(b.procs, w)
		all = append(all, w)
	}
	mem := make([]ProcMemory, len(all))
	for i, p := range all {
		mem[i].Name = p.Name
	}
	sample := func(into func(i int, rss int64)) {
		for i, p := range all {
			if rss, err := p.RSS(); err == nil {
				into(i, rss)
			}
		}
	}
	// The first sample is taken after a warm-up, once caches and pools
	// have reached their working size; growth after that is what leaks.
	warm := min(10*time.Second, b.o.Soak/6)
	loadDone := make(chan error, 1)
	go func() {
		var err error
		res.Load, err = loadgen.Run(ctx, loadgen.Options{
			URL: ing.webhookURL, Key: key, N: b.o.SoakRate*int(b.o.Soak.Seconds()) + 1,
			Duration: b.o.Soak, Concurrency: 256, Rate: b.o.SoakRate, RunID: "soak",
		})
		loadDone <- err
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start := time.Now()
	started := false
	for {
		select {
		case err := <-loadDone:
			if err != nil {
				return res, err
			}
			// Let the workers catch up before the last sample.
			time.Sleep(2 * time.Second)
			sample(func(i int, rss int64) { mem[i].End = rss; mem[i].Peak = max(mem[i].Peak, rss) })
			res.Procs = mem
			return res, nil
		case <-tick.C:
			if !started && time.Since(start) >= warm {
				started = true
				sample(func(i int, rss int64) { mem[i].Start = rss })
			}
			if at := time.Since(start).Round(time.Minute); at > 0 && (len(res.Series) == 0 || res.Series[len(res.Series)-1].At < at) && time.Since(start) >= at {
				s := SoakSample{At: at, RSS: make([]int64, len(all))}
				sample(func(i int, rss int64) { s.RSS[i] = rss })
				res.Series = append(res.Series, s)
			}
			sample(func(i int, rss int64) { mem[i].Peak = max(mem[i].Peak, rss) })
		}
	}
}

// GoBench is one parsed Go benchmark line.
type GoBench struct {
	Name    string
	Metrics map[string]float64 // unit -> value, e.g. "ns/op", "items/s"
}

func parseGoBench(path string) ([]GoBench, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []GoBench
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") {
			continue
		}
		gb := GoBench{Name: fields[0], Metrics: map[string]float64{}}
		// Drop the -GOMAXPROCS suffix so names are stable across machines.
		if i := strings.LastIndexByte(gb.Name, '-'); i > 0 {
			if _, err := strconv.Atoi(gb.Name[i+1:]); err == nil {
				gb.Name = gb.Name[:i]
			}
		}
		for i := 2; i+1 < len(fields); i += 2 {
			if v, err := strconv.ParseFloat(fields[i], 64); err == nil {
				gb.Metrics[fields[i+1]] = v
			}
		}
		out = append(out, gb)
	}
	return out, sc.Err()
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = " " + strings.TrimSpace(string(b))
	}
	memTotal := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 && f[0] == "MemTotal:" {
			if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
				memTotal = fmt.Sprintf(", %.0f GiB RAM", kb/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%s, %d cores%s, %s/%s%s, %s", model, runtime.NumCPU(), memTotal, runtime.GOOS, runtime.GOARCH, kernel, runtime.Version())
}

// LoadgenPubKey is the hex public key of the load generator's default
// signing key: what the processes under test trust.
func LoadgenPubKey() string { return loadgen.PublicKeyHex(loadgen.KeyFromSeed(loadgen.DefaultSeed)) }

// freeAddr returns a loopback address with a port free right now.
func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not listening after %s", addr, timeout)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
