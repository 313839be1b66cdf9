package events_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/loadgen"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/testutil"
)

// BenchmarkPublishSync measures synchronous JetStream publishes per
// second of loadgen's webhook payloads, stored exactly as ingest stores
// them (headers, message id, file storage, embedded server). "always" is
// the embedded server's default, fsyncing every write before the ack;
// "lazy" syncs every 2 minutes (-store-sync 2m, JetStream's own default).
// "serial" is one publisher waiting for each ack; "concurrent-64" is 64
// publishers, as ingest under load has one per request in flight;
// "group-64" is 64 publishers through a GroupCommitter, ingest's default.
func BenchmarkPublishSync(b *testing.B) {
	for _, sync := range []struct {
		name     string
		interval time.Duration
	}{{"always", 0}, {"lazy", 2 * time.Minute}} {
		for _, par := range []int{1, 64, -64} {
			name := "serial"
			switch {
			case par < 0:
				par = -par
				name = fmt.Sprintf("group-%d", par)
			case par > 1:
				name = fmt.Sprintf("concurrent-%d", par)
			}
			b.Run(sync.name+"/"+name, func(b *testing.B) {
				srv, err := natsembed.Start(natsembed.Config{StoreDir: b.TempDir(), SyncInterval: sync.interval})
				require.NoError(b, err)
				b.Cleanup(srv.Shutdown)
				_, js := testutil.Connect(b, srv)
				ctx := context.Background()
				_, err = events.EnsureEventStream(ctx, js, events.StreamConfig{})
				require.NoError(b, err)
				run := strconv.FormatInt(time.Now().UnixNano(), 36)
				pub := func(m *nats.Msg) error {
					_, err := js.PublishMsg(ctx, m, jetstream.WithExpectStream(events.StreamName))
					return err
				}
				var g *events.GroupCommitter
				if strings.HasPrefix(name, "group") {
					g, err = events.NewGroupCommitter(js, events.StreamName, events.GroupConfig{})
					require.NoError(b, err)
					b.Cleanup(g.Close)
					pub = func(m *nats.Msg) error {
						_, err := g.Publish(ctx, m)
						return err
					}
				}
				var next atomic.Int64
				b.ResetTimer()
				b.SetParallelism((par + 1) / 2) // RunParallel multiplies by GOMAXPROCS (2 here)
				if par == 1 {
					for i := range b.N {
						publish(b, pub, run, i)
					}
				} else {
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							publish(b, pub, run, int(next.Add(1)))
						}
					})
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "publishes/s")
				if g != nil {
					if batches, batched, _ := g.Stats(); batches > 0 {
						b.ReportMetric(float64(batched)/float64(batches), "msgs/batch")
					}
				}
			})
		}
	}
}

func publish(b *testing.B, pub func(*nats.Msg) error, run string, i int) {
	body := loadgen.Body(run, i)
	env, err := cobo.ParseEnvelope(body)
	if err != nil {
		b.Error(err)
		return
	}
	d := cobo.Delivery{Envelope: env, Body: body, Timestamp: "1700000000000", Signature: "00", ReceivedAt: time.Now()}
	if err := pub(events.NewMsg(d)); err != nil {
		b.Error(err)
	}
}
