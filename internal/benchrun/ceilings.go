package benchrun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/httpapi"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/loadgen"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/procs"
	"github.com/paystream/paystream/internal/webhook"
)

// ServeVerifyOnly serves ingest's webhook route with ingest's HTTP stack
// (the same handler, server limits and verifier) on listen, but answers
// 200 without storing anything: the ceiling ingest's HTTP and
// verification put on it, measured by the same load as ingest. It trusts
// pubKeyHex and serves until ctx is done. `benchrun -serve-verify-only`
// runs it in a process of its own, as ingest is.
func ServeVerifyOnly(ctx context.Context, listen, pubKeyHex string) error {
	verifier, err := cobo.NewVerifier(pubKeyHex)
	if err != nil {
		return fmt.Errorf("verify-only: %w", err)
	}
	wh, err := webhook.NewHandler(webhook.Config{
		Verifier: verifier,
		Store:    discardStore{},
		Logger:   zerolog.Nop(),
		Metrics:  webhook.NewMetrics(prometheus.NewRegistry()),
	})
	if err != nil {
		return fmt.Errorf("verify-only: %w", err)
	}
	r := mux.NewRouter()
	r.Handle(ingest.WebhookPath, wh)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("verify-only: %w", err)
	}
	srv := httpapi.NewServer(r)
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("verify-only: %w", err)
	}
	return nil
}

// discardStore stores nothing and reports every delivery as new.
type discardStore struct{}

func (discardStore) Store(context.Context, cobo.Delivery) (bool, error) { return false, nil }

// startVerifyOnly starts this executable as a verify-only server.
func (b *bench) startVerifyOnly() (url string, p *procs.Proc, err error) {
	self, err := os.Executable()
	if err != nil {
		return "", nil, fmt.Errorf("verify-only: %w", err)
	}
	listen := freeAddr()
	p, err = procs.Start("verify-only", self, []string{"-serve-verify-only", listen}, filepath.Join(b.o.Dir, "verify-only.log"), 0)
	if err != nil {
		return "", nil, err
	}
	b.procs = append(b.procs, p)
	if err := waitTCP(listen, 10*time.Second); err != nil {
		return "", nil, fmt.Errorf("verify-only: %w (see %s)", err, p.Log)
	}
	return "http://" + listen + ingest.WebhookPath, p, nil
}

// PublishCeiling is one run of concurrent JetStream publishes.
type PublishCeiling struct {
	Name      string
	Messages  int
	PerSecond float64
	// CPUus is this process's CPU per message: the embedded server and
	// the publishers.
	CPUus float64
	// Batches and Batched count the group committer's atomic batches.
	Batches, Batched int64
}

// publishCeiling stores n of loadgen's webhook payloads, as ingest stores
// them (subject, headers, message id), from concurrency publishers into a
// fresh embedded server in this process, connected in-process as ingest
// is. syncEvery is the server's fsync interval (0: every write); group sends
// through an events.GroupCommitter, as ingest with -group-commit does.
func publishCeiling(ctx context.Context, dir, name string, n, concurrency int, syncEvery time.Duration, group bool) (PublishCeiling, error) {
	res := PublishCeiling{Name: name, Messages: n}
	js, stop, err := inProcessJetStream(filepath.Join(dir, name), syncEvery)
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	defer stop()
	if _, err := events.EnsureEventStream(ctx, js, events.StreamConfig{}); err != nil {
		return res, err
	}
	publish := events.NewPublisher(js)
	var g *events.GroupCommitter
	if group {
		if g, err = events.NewGroupCommitter(js, events.StreamName, events.GroupConfig{}); err != nil {
			return res, err
		}
		defer g.Close()
		publish = events.NewGroupPublisher(g)
	}
	// Built before the clock starts, as loadgen presigns.
	run := name + "-" + time.Now().UTC().Format("150405")
	sig := strings.Repeat("ab", 64)
	ds := make([]cobo.Delivery, n)
	for i := range ds {
		body := loadgen.Body(run, i)
		env, err := cobo.ParseEnvelope(body)
		if err != nil {
			return res, err
		}
		ds[i] = cobo.Delivery{Envelope: env, Body: body, Timestamp: "1700000000000", Signature: sig, ReceivedAt: time.Now()}
	}
	cpu0 := loadgen.ProcessCPU()
	start := time.Now()
	failed := eachConcurrently(ctx, n, concurrency, func(i int) error {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		_, err := publish.Store(pctx, ds[i])
		return err
	})
	secs := time.Since(start).Seconds()
	if failed > 0 {
		return res, fmt.Errorf("%s: %d of %d publishes failed", name, failed, n)
	}
	res.PerSecond = float64(n) / secs
	res.CPUus = float64((loadgen.ProcessCPU() - cpu0).Microseconds()) / float64(n)
	if g != nil {
		res.Batches, res.Batched, _ = g.Stats()
	}
	return res, ctx.Err()
}

// KVCeiling is one run of concurrent compare-and-set creates on a
// key-value bucket whose server syncs every write: the durable write rate
// the workers' order updates share, one synced write per event.
type KVCeiling struct {
	InFlight  int
	Writes    int
	PerSecond float64
}

// kvCeiling creates n keys, each holding one of loadgen's payloads (the
// size of an order), from inFlight writers into a fresh embedded server
// in this process syncing every write.
func kvCeiling(ctx context.Context, dir string, n, inFlight int) (KVCeiling, error) {
	res := KVCeiling{InFlight: inFlight, Writes: n}
	name := fmt.Sprintf("kv-always-%d", inFlight)
	js, stop, err := inProcessJetStream(filepath.Join(dir, name), 0)
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	defer stop()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "ceiling"})
	if err != nil {
		return res, fmt.Errorf("%s: %w", name, err)
	}
	vals := make([][]byte, n)
	for i := range vals {
		vals[i] = loadgen.Body(name, i)
	}
	start := time.Now()
	failed := eachConcurrently(ctx, n, inFlight, func(i int) error {
		_, err := kv.Create(ctx, fmt.Sprintf("o%d", i), vals[i])
		return err
	})
	if failed > 0 {
		return res, fmt.Errorf("%s: %d of %d creates failed", name, failed, n)
	}
	res.PerSecond = float64(n) / time.Since(start).Seconds()
	return res, ctx.Err()
}

// eachConcurrently calls do for 0 <= i < n from inFlight goroutines, each
// taking the next i, until all are done or ctx is; it returns how many
// calls failed.
func eachConcurrently(ctx context.Context, n, inFlight int, do func(i int) error) int64 {
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	for range inFlight {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := do(i); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return failed.Load()
}

// inProcessJetStream starts a fresh embedded server storing in dir with
// fsync interval syncEvery (0: every write) and connects to it in-process,
// as ingest does; stop closes both.
func inProcessJetStream(dir string, syncEvery time.Duration) (js jetstream.JetStream, stop func(), err error) {
	srv, err := natsembed.Start(natsembed.Config{StoreDir: dir, SyncInterval: syncEvery})
	if err != nil {
		return nil, nil, err
	}
	shutdown := func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	if err != nil {
		shutdown()
		return nil, nil, fmt.Errorf("connect: %w", err)
	}
	if js, err = jetstream.New(nc); err != nil {
		nc.Close()
		shutdown()
		return nil, nil, err
	}
	return js, func() { nc.Close(); shutdown() }, nil
}
