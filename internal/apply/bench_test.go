package apply_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/apply"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/loadgen"
	tu "github.com/paystream/paystream/internal/testutil"
)

// BenchmarkConsume is a worker's whole per-event path, as `bin/worker`
// runs it without allocation rules: b.N stored loadgen events (a Pending
// then a Completed per order, signed as Cobo signs) pulled from the
// shared durable consumer, re-verified, applied to the orders bucket with
// compare-and-set and acked, against a real embedded JetStream server
// (file storage, fsync always). The server runs in the benchmark's
// process: a CPU profile shows both sides, told apart by package.
func BenchmarkConsume(b *testing.B) {
	ctx := context.Background()
	_, js := tu.Connect(b, tu.StartJetStream(b))
	_, err := events.EnsureEventStream(ctx, js, events.StreamConfig{})
	require.NoError(b, err)
	kv, err := events.EnsureOrdersBucket(ctx, js, events.StreamConfig{})
	require.NoError(b, err)
	orders, err := events.OpenOrderStore(ctx, js, kv, events.StreamConfig{})
	require.NoError(b, err)
	key := loadgen.KeyFromSeed(loadgen.DefaultSeed)
	v, err := cobo.NewVerifier(loadgen.PublicKeyHex(key))
	require.NoError(b, err)
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	for i := range b.N {
		body := loadgen.Body(run, i)
		env, err := cobo.ParseEnvelope(body)
		require.NoError(b, err)
		ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
		d := cobo.Delivery{Envelope: env, Body: body, Timestamp: ts, Signature: cobo.SignWebhook(key, body, ts), ReceivedAt: time.Now()}
		_, err = js.PublishMsg(ctx, events.NewMsg(d), jetstream.WithExpectStream(events.StreamName))
		require.NoError(b, err)
	}
	reg := prometheus.NewRegistry()
	proc, err := apply.New(js, orders, apply.Config{Verifier: v, Metrics: apply.NewMetrics(reg), Logger: zerolog.Nop()})
	require.NoError(b, err)
	ccfg := events.ConsumerConfig{Metrics: events.NewConsumerMetrics(reg), Logger: zerolog.Nop()}
	cons, err := events.EnsureConsumer(ctx, js, ccfg)
	require.NoError(b, err)
	c, err := events.NewConsumer(js, cons, proc, ccfg)
	require.NoError(b, err)

	b.ResetTimer()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	for {
		info, err := cons.Info(ctx)
		require.NoError(b, err)
		if info.AckFloor.Stream >= uint64(b.N) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	stop()
	require.NoError(b, <-done)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
