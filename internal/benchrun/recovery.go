package benchrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/demo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/loadgen"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/procs"
	"github.com/paystream/paystream/internal/sandbox"
)

// The recovery measurement: two workers allocating under load, one of
// them killed with SIGKILL.
const (
	// recoveryTarget is the target the measurement is held against.
	recoveryTarget = 15 * time.Second
	// recoveryTimeout bounds the wait after the kill.
	recoveryTimeout = 3 * time.Minute
	// recoveryKillAt is the share of the load's planned length after
	// which the worker is killed: late enough that it has long been busy,
	// early enough that it holds work of orders still arriving. The orders
	// started after the kill, which the surviving worker handles at once,
	// then add little to the time measured.
	recoveryKillAt = 0.75
	// recoveryQuiet is how long the allocations at the providers must stay
	// as they are once every order is settled before they are counted: a
	// recovering sender that sent an item again shows up in it.
	recoveryQuiet = 5 * time.Second
	// recoveryTick is how often the phase looks at the processes.
	recoveryTick = 100 * time.Millisecond
	// recoverySeed makes the payer's orders the same in every run.
	recoverySeed = "17"
	// payerFinished is the sandbox's log message once every order is played.
	payerFinished = `"message":"payer finished"`
)

// RecoveryResult is what the recovery phase measured. Seconds count from
// the kill.
type RecoveryResult struct {
	// Orders were played at Rate per second; the victim was killed
	// KilledAfter seconds into the load, having handled VictimEvents.
	Orders, Rate int
	KilledAfter  float64
	VictimEvents int
	// HeldEvents and HeldIntents were delivered to either worker and not
	// acked at the kill: events and allocation intents (Cobo and BitGo).
	HeldEvents, HeldIntents int
	// InFlight orders were in the orders bucket, not yet settled, at the
	// kill.
	InFlight int
	// LoadEnd is when the payer had played its last order; LoadEnded is
	// false when that was not seen.
	LoadEnd   float64
	LoadEnded bool
	// FirstRedelivery is when the surviving worker first handled an event
	// delivered before (one the victim held); Redelivered is false when
	// none came.
	FirstRedelivery float64
	Redelivered     bool
	// Recovered is when the last order became final with every allocation
	// item final; Settled is false when that did not happen within
	// recoveryTimeout (Recovered is then how long was waited).
	Recovered float64
	Settled   bool
	// Items are the orders' allocation items; Failed of them failed.
	// CoboHeld and BitGoHeld are the items the orders record as made at
	// Cobo and BitGo (completed, or failed at the provider); CoboItems and
	// BitGoAllocations are what the sandbox holds.
	Items, Failed               int
	CoboHeld, BitGoHeld         int
	CoboItems, BitGoAllocations int
	// Problem says what went wrong: an allocation missing or made twice,
	// or orders not settled in time. Empty when all is well.
	Problem string
}

// Met reports whether the last order settled within recoveryTarget.
func (r RecoveryResult) Met() bool {
	return r.Settled && r.Recovered <= recoveryTarget.Seconds()
}

// recovery starts ingest with its embedded server, two workers with the
// demo's allocation rules and the sandbox with its payer, kills the first
// worker with SIGKILL three quarters into the load, and times the kill to
// the moment the last order is final with every allocation item final,
// watching the orders bucket. Then it checks that every allocation exists
// exactly once at Cobo or BitGo.
func (b *bench) recovery(ctx context.Context) (RecoveryResult, error) {
	o := b.o
	res := RecoveryResult{Orders: o.RecoveryOrders, Rate: o.RecoveryRate}
	if o.RecoveryRate <= 0 {
		return res, fmt.Errorf("-recovery-rate must be positive, got %d", o.RecoveryRate)
	}
	// The sandbox signs webhooks with the key ingest trusts: the load
	// generator's (sandbox.WebhookKeyFromSeed is loadgen.KeyFromSeed).
	dir := filepath.Join(o.Dir, "recovery")
	files, err := demo.Prepare(o.Bin, dir)
	if err != nil {
		return res, err
	}
	var started []*procs.Proc
	defer func() {
		// The sandbox, then the workers, then ingest.
		for i := len(started) - 1; i >= 0; i-- {
			started[i].Stop(15 * time.Second)
		}
	}()
	ing, err := b.startIngest("recovery/ingest", nil)
	if err != nil {
		return res, err
	}
	started = append(started, ing.proc)
	client := &http.Client{Timeout: 2 * time.Second}
	sandboxAddr := freeAddr()
	var workers []*procs.Proc
	var metricsURLs []string
	for i := range 2 {
		w, metrics, err := b.startWorker(ing, fmt.Sprintf("recovery/worker-%d", i+1), 300*time.Millisecond, files.WorkerArgs(sandboxAddr)...)
		if err != nil {
			return res, err
		}
		started = append(started, w)
		workers, metricsURLs = append(workers, w), append(metricsURLs, "http://"+metrics)
	}
	for i, w := range workers {
		if err := waitOK(ctx, client, metricsURLs[i]+"/readyz", w, 30*time.Second); err != nil {
			return res, err
		}
	}
	victim := workers[0]

	// As the operator console does: the operator may watch the orders
	// bucket (answering its flow control) and read the consumers' state.
	nc, err := ing.connect(natsembed.UserOperator)
	if err != nil {
		return res, fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return res, err
	}
	kv, err := js.KeyValue(ctx, events.OrdersBucket)
	if err != nil {
		return res, fmt.Errorf("orders bucket: %w", err)
	}
	watch, err := kv.WatchAll(ctx)
	if err != nil {
		return res, fmt.Errorf("watch orders: %w", err)
	}
	defer func() { _ = watch.Stop() }()
	orders := orderWatch{}

	load := time.Duration(float64(o.RecoveryOrders) / float64(o.RecoveryRate) * float64(time.Second))
	b.say("recovery: %d orders at %d/s with allocation rules, 2 workers; worker-1 killed with SIGKILL after %.1fs",
		o.RecoveryOrders, o.RecoveryRate, recoveryKillAt*load.Seconds())
	start := time.Now()
	sandboxLog := filepath.Join(b.o.Dir, "recovery", "sandbox.log")
	sb, err := procs.Start("recovery/sandbox", filepath.Join(o.Bin, "sandbox"), append([]string{
		"-listen", sandboxAddr, "-webhook-url", ing.webhookURL, "-webhook-seed", loadgen.DefaultSeed,
		"-orders", strconv.Itoa(o.RecoveryOrders), "-rate", strconv.Itoa(o.RecoveryRate), "-seed", recoverySeed, "-log-level", "info",
	}, files.SandboxArgs()...), sandboxLog, 0)
	if err != nil {
		return res, err
	}
	started = append(started, sb)

	killAt := start.Add(time.Duration(recoveryKillAt * float64(load)))
	deadline := killAt.Add(recoveryTimeout)
	var killed, settledAt time.Time
	var redeliveries0 float64
	tick := time.NewTicker(recoveryTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case e, ok := <-watch.Updates():
			if !ok {
				return res, errors.New("the watch on the orders bucket ended")
			}
			if e != nil {
				orders.apply(e, time.Now())
			}
			continue
		case <-tick.C:
		}
		now := time.Now()
		for _, p := range started {
			if p == victim && !killed.IsZero() {
				continue
			}
			select {
			case <-p.Done():
				return res, fmt.Errorf("%s exited (see %s)", p.Name, p.Log)
			default:
			}
		}
		if now.After(deadline) {
			res.Recovered = now.Sub(killed).Seconds()
			res.Problem = fmt.Sprintf("not every order final and allocated within %s of the kill: %d of %d settled", recoveryTimeout, orders.settled(), o.RecoveryOrders)
			break
		}
		if killed.IsZero() {
			if now.Before(killAt) {
				continue
			}
			if res.HeldEvents, res.HeldIntents, err = held(ctx, js); err != nil {
				return res, err
			}
			v, err := scrape(client, metricsURLs[0], "paystream_worker_events_total")
			if err != nil {
				return res, err
			}
			res.VictimEvents = int(v)
			if redeliveries0, err = scrape(client, metricsURLs[1], "paystream_worker_redeliveries_total"); err != nil {
				return res, err
			}
			res.InFlight = len(orders) - orders.settled()
			victim.Kill()
			killed = time.Now()
			res.KilledAfter = killed.Sub(start).Seconds()
			b.say("  killed worker-1 after %.1fs (%d events handled; %d events and %d allocation intents unacked by the two workers, %d orders in flight)",
				res.KilledAfter, res.VictimEvents, res.HeldEvents, res.HeldIntents, res.InFlight)
			continue
		}
		if !res.Redelivered {
			if v, err := scrape(client, metricsURLs[1], "paystream_worker_redeliveries_total"); err == nil && v > redeliveries0 {
				res.Redelivered, res.FirstRedelivery = true, now.Sub(killed).Seconds()
			}
		}
		if !res.LoadEnded {
			if log, err := os.ReadFile(sandboxLog); err == nil && strings.Contains(string(log), payerFinished) {
				res.LoadEnded, res.LoadEnd = true, now.Sub(killed).Seconds()
			}
		}
		if !res.LoadEnded || len(orders) < o.RecoveryOrders || orders.settled() < len(orders) {
			settledAt, res.Settled = time.Time{}, false
			continue
		}
		if settledAt.IsZero() {
			settledAt = now
			res.Settled, res.Recovered = true, max(0, orders.lastSettled().Sub(killed).Seconds())
			b.say("  every order final and allocated %.1fs after the kill; checking the allocations for %s", res.Recovered, recoveryQuiet)
		}
		if now.Sub(settledAt) >= recoveryQuiet {
			break
		}
	}
	res.Items, res.Failed, res.CoboHeld, res.BitGoHeld = orders.items()
	var st sandbox.State
	if err := getJSON(client, "http://"+sandboxAddr+"/sandbox/state", &st); err != nil {
		return res, err
	}
	res.CoboItems, res.BitGoAllocations = st.Items, st.BitGoAllocations
	if res.Problem == "" && (res.CoboItems != res.CoboHeld || res.BitGoAllocations != res.BitGoHeld) {
		res.Problem = fmt.Sprintf("allocations not exactly once: %d items at Cobo and %d at BitGo for %d and %d recorded on the orders",
			res.CoboItems, res.BitGoAllocations, res.CoboHeld, res.BitGoHeld)
	}
	if res.Problem != "" {
		b.say("  ✘ %s", res.Problem)
	} else {
		b.say("  ✔ %d items at Cobo and %d allocations at BitGo, each recorded once on its order; first redelivery %s after the kill",
			res.CoboItems, res.BitGoAllocations, secs(res.Redelivered, res.FirstRedelivery))
	}
	return res, nil
}

// held counts what the two workers hold, delivered and not acked: events,
// and allocation intents of both backends.
func held(ctx context.Context, js jetstream.JetStream) (evs, intents int, err error) {
	for _, c := range []struct{ stream, consumer string }{
		{events.StreamName, events.ConsumerName},
		{allocation.IntentStream, allocation.BatcherConsumer},
		{allocation.IntentStream, allocation.BitGoConsumer},
	} {
		cons, err := js.Consumer(ctx, c.stream, c.consumer)
		if err != nil {
			return 0, 0, fmt.Errorf("consumer %s: %w", c.consumer, err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return 0, 0, fmt.Errorf("consumer %s: %w", c.consumer, err)
		}
		if c.stream == events.StreamName {
			evs += info.NumAckPending
		} else {
			intents += info.NumAckPending
		}
	}
	return evs, intents, nil
}

// orderWatch is each order's state as the watch on the orders bucket
// last showed it, by key.
type orderWatch map[string]watchedOrder

type watchedOrder struct {
	// settled: final, with every allocation item final; since is when the
	// watch first showed it so (zero while not settled).
	settled bool
	since   time.Time
	// items, failed, and those made at Cobo and at BitGo.
	items, failed, cobo, bitgo int
}

func (w orderWatch) apply(e jetstream.KeyValueEntry, now time.Time) {
	if e.Operation() != jetstream.KeyValuePut {
		delete(w, e.Key())
		return
	}
	var o domain.Order
	if err := json.Unmarshal(e.Value(), &o); err != nil {
		return // not an order: not counted, so the phase waits and says so
	}
	s := watchedOrder{settled: o.Status.Final() && o.Settled(), items: len(o.Allocations)}
	for _, it := range o.Allocations {
		// A failed item with a provider id was failed by the provider,
		// which holds it; without one it was refused, and exists nowhere.
		made := it.Status == domain.AllocCompleted || (it.Status == domain.AllocFailed && it.ProviderID != "")
		if it.Status == domain.AllocFailed {
			s.failed++
		}
		switch {
		case made && it.Backend == domain.BackendCobo:
			s.cobo++
		case made && it.Backend == domain.BackendBitGo:
			s.bitgo++
		}
	}
	if s.settled {
		s.since = now
		if prev := w[e.Key()]; prev.settled {
			s.since = prev.since
		}
	}
	w[e.Key()] = s
}

func (w orderWatch) settled() int {
	n := 0
	for _, o := range w {
		if o.settled {
			n++
		}
	}
	return n
}

// lastSettled is when the last order to settle did.
func (w orderWatch) lastSettled() time.Time {
	var last time.Time
	for _, o := range w {
		if o.since.After(last) {
			last = o.since
		}
	}
	return last
}

func (w orderWatch) items() (items, failed, cobo, bitgo int) {
	for _, o := range w {
		items, failed, cobo, bitgo = items+o.items, failed+o.failed, cobo+o.cobo, bitgo+o.bitgo
	}
	return items, failed, cobo, bitgo
}

// startWorker starts a worker, as every phase does: logged in to ing's
// server as the worker user, trusting the load generator's webhook key
// (which the recovery phase's sandbox signs with too), logging to
// <Dir>/<name>.log, with extra flags. It returns the worker and its
// metrics address.
func (b *bench) startWorker(ing *ingestProc, name string, settle time.Duration, extra ...string) (*procs.Proc, string, error) {
	return b.startWorkerFrom(b.o.Bin, ing, name, settle, extra...)
}

// startWorkerFrom is startWorker with the worker binary of directory bin.
func (b *bench) startWorkerFrom(bin string, ing *ingestProc, name string, settle time.Duration, extra ...string) (*procs.Proc, string, error) {
	metrics := freeAddr()
	args := append(ing.loginFlags(natsembed.UserWorker), "-cobo-pubkey", LoadgenPubKey(), "-metrics-listen", metrics, "-log-level", "warn")
	w, err := procs.Start(name, filepath.Join(bin, "worker"), append(args, extra...), filepath.Join(b.o.Dir, name+".log"), settle)
	return w, metrics, err
}

// waitOK polls url until it answers 200, for at most timeout; it fails at
// once when p exits.
func waitOK(ctx context.Context, client *http.Client, url string, p *procs.Proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Done():
			return fmt.Errorf("%s exited (see %s)", p.Name, p.Log)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not answer 200 within %s (see %s)", url, timeout, p.Log)
}

// scrape reads one figure of the /metrics under base.
func scrape(client *http.Client, base, name string) (float64, error) {
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s/metrics: %s", base, resp.Status)
	}
	return demo.Metric(resp.Body, name)
}

func getJSON(client *http.Client, url string, v any) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
