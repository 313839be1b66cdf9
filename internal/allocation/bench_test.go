package allocation_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/testutil"
)

// benchRunner is one allocation backend under benchmark: it runs until
// its context ends.
type benchRunner interface {
	Run(ctx context.Context) error
}

// BenchmarkAllocationThroughput measures allocation items per second from
// planned intents to outcomes recorded on orders, through the real
// batcher (Cobo) or sender (BitGo) against the sandbox on loopback, with
// embedded JetStream. One op is one item.
func BenchmarkAllocationThroughput(b *testing.B) {
	for _, backend := range []string{domain.BackendCobo, domain.BackendBitGo} {
		for _, replicas := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/workers=%d", backend, replicas), func(b *testing.B) {
				benchAllocations(b, backend, replicas)
			})
		}
	}
}

func benchAllocations(b *testing.B, backend string, workers int) {
	srv := testutil.StartJetStream(b)
	_, js := testutil.Connect(b, srv)
	ctx := context.Background()
	cfg := events.StreamConfig{}
	require.NoError(b, allocation.EnsureResources(ctx, js, cfg, time.Minute))
	kv, err := events.EnsureOrdersBucket(ctx, js, cfg)
	require.NoError(b, err)
	orders := events.NewOrderStore(kv)
	reg := prometheus.NewRegistry()
	metrics := allocation.NewMetrics(reg)
	quiet := zerolog.Nop()

	var newRunner func() benchRunner
	dest := "developer"
	switch backend {
	case domain.BackendCobo:
		seed := make([]byte, 32)
		_, _ = rand.Read(seed)
		signer, err := cobo.NewAPISigner(hex.EncodeToString(seed))
		require.NoError(b, err)
		hs := httptest.NewServer(cobosim.New(cobosim.Config{APIKeys: []string{signer.APIKey()}, Logger: quiet}))
		b.Cleanup(hs.Close)
		client, err := cobo.NewClient(cobo.ClientConfig{BaseURL: hs.URL + "/v2", Signer: signer})
		require.NoError(b, err)
		newRunner = func() benchRunner {
			bt, err := allocation.NewBatcher(ctx, js, client, orders, allocation.BatcherConfig{BatchWait: 20 * time.Millisecond, Logger: quiet, Metrics: metrics})
			require.NoError(b, err)
			return bt
		}
	case domain.BackendBitGo:
		key, err := secp256k1.GeneratePrivateKey()
		require.NoError(b, err)
		hs := httptest.NewServer(bitgosim.New(bitgosim.Config{EnterpriseID: "e", AccessToken: "t", SigningPub: key.PubKey(), Logger: quiet}))
		b.Cleanup(hs.Close)
		client, err := bitgo.New(bitgo.Config{BaseURL: hs.URL, EnterpriseID: "e", AccessToken: "t", SigningKey: key, Currencies: bitgo.DefaultCurrencies()})
		require.NoError(b, err)
		dest = allocation.BitGoPrefix + "conn-1"
		newRunner = func() benchRunner {
			s, err := allocation.NewBitGoSender(ctx, js, client, orders, allocation.BitGoSenderConfig{Logger: quiet, Metrics: metrics})
			require.NoError(b, err)
			return s
		}
	}

	// Every op is an order with one planned item, published to the
	// intent stream as a worker's outbox would.
	outbox := allocation.NewOutbox(js)
	run := fmt.Sprintf("%d", time.Now().UnixNano())
	for i := range b.N {
		id := fmt.Sprintf("B-%s-%d", run, i)
		o := &domain.Order{OrderID: id, Allocations: []domain.AllocationItem{{
			ID: id + ":split:0", Kind: domain.KindSplit, OrderID: id, Backend: backend, TokenID: "ETH_USDT",
			Amount: decimal.RequireFromString("1.5"), Source: "M1001", Destination: dest,
			Description: "bench " + id, Status: domain.AllocPlanned,
		}}}
		_, err := orders.Put(ctx, o, 0)
		require.NoError(b, err)
		_, err = outbox.Publish(ctx, o)
		require.NoError(b, err)
	}

	b.ResetTimer()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{}, workers)
	for range workers {
		r := newRunner()
		go func() { _ = r.Run(rctx); done <- struct{}{} }()
	}
	deadline := time.Now().Add(5 * time.Minute)
	for int(itemCount(b, reg, backend, domain.AllocCompleted)) < b.N {
		if time.Now().After(deadline) {
			cancel()
			b.Fatalf("only %d of %d items completed within 5 minutes", int(itemCount(b, reg, backend, domain.AllocCompleted)), b.N)
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
	cancel()
	for range workers {
		<-done
	}
}

// itemCount reads paystream_allocation_items_total{backend,status}.
func itemCount(tb testing.TB, reg *prometheus.Registry, backend, status string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	require.NoError(tb, err)
	for _, mf := range mfs {
		if mf.GetName() != "paystream_allocation_items_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["backend"] == backend && labels["status"] == status {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
