package apply_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/apply"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	tu "github.com/paystream/paystream/internal/testutil"
)

func TestConfigValidateNamesTheField(t *testing.T) {
	t.Parallel()
	v := tu.NewSigner(t).Verifier(t)
	cases := []struct {
		name, field, want string
		cfg               apply.Config
	}{
		{"no verifier", "Verifier", "Verifier is required", apply.Config{}},
		{"verifier and reconcile only", "Verifier", "Verifier and ReconcileOnly exclude each other", apply.Config{Verifier: v, ReconcileOnly: true}},
		{"allocation without rules", "Allocation.Rules", "Allocation.Rules is required", apply.Config{Verifier: v, Allocation: &apply.Allocation{}}},
		{"state only", "", "", apply.Config{Verifier: v}},
		{"reconcile only", "", "", apply.Config{ReconcileOnly: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			err := c.cfg.Validate()
			if c.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, c.want)
			var ce *apply.ConfigError
			require.ErrorAs(t, err, &ce)
			require.Equal(t, c.field, ce.Field)
		})
	}
}

// core is a real JetStream server with the orders bucket.
type core struct {
	js     jetstream.JetStream
	orders *events.OrderStore
	signer *tu.Signer
}

func newCore(t *testing.T) *core {
	t.Helper()
	_, js := tu.Connect(t, tu.StartJetStream(t))
	kv, err := events.EnsureOrdersBucket(context.Background(), js, events.StreamConfig{})
	require.NoError(t, err)
	return &core{js: js, orders: events.NewOrderStore(kv), signer: tu.NewSigner(t)}
}

// event is body as a worker receives it, signed by signer.
func event(t *testing.T, signer *tu.Signer, body []byte) events.Event {
	t.Helper()
	env, err := cobo.ParseEnvelope(body)
	require.NoError(t, err)
	ts, sig := signer.Sign(body)
	return events.Event{Delivery: cobo.Delivery{Envelope: env, Body: body, Timestamp: ts, Signature: sig, ReceivedAt: time.Now()}, Seq: 1, NumDelivered: 1}
}

func TestProcessVerifiesBeforeItChangesAnything(t *testing.T) {
	c := newCore(t)
	reg := prometheus.NewRegistry()
	var observed []handlers.Outcome
	p, err := apply.New(c.js, c.orders, apply.Config{
		Verifier: c.signer.Verifier(t),
		Metrics:  apply.NewMetrics(reg),
		Observer: func(_ context.Context, _ events.Event, out handlers.Outcome) error {
			observed = append(observed, out)
			return nil
		},
	})
	require.NoError(t, err)
	ctx := context.Background()

	// Signed by a key nobody trusts: invalid for good, and nothing stored.
	forged := event(t, tu.NewSigner(t), tu.OrderEvent("e-forged", "O-apply-1", "M1001", "Completed", 100, "102"))
	err = p.Process(ctx, forged)
	require.ErrorIs(t, err, domain.ErrUntrusted)
	require.ErrorIs(t, err, domain.ErrInvalid, "the consumer dead-letters it at once")
	_, _, err = c.orders.Get(ctx, "O-apply-1")
	require.ErrorIs(t, err, domain.ErrNotFound)
	require.Empty(t, observed, "the observer sees committed outcomes only")

	ev := event(t, c.signer, tu.OrderEvent("e-1", "O-apply-1", "M1001", "Pending", 100, "0"))
	out, err := p.Apply(ctx, ev)
	require.NoError(t, err)
	require.Equal(t, handlers.Applied, out.Result)
	require.Equal(t, domain.OrderStatus("Pending"), out.StatusTo)
	// A redelivery changes nothing.
	require.NoError(t, p.Process(ctx, ev))
	require.Len(t, observed, 2)
	require.Equal(t, handlers.Unchanged, observed[1].Result)

	require.Equal(t, 1.0, counted(t, reg, "paystream_worker_events_total", "applied", cobo.EventOrderStatusUpdated), "labels sort by name: result, type")
	require.Equal(t, 1.0, counted(t, reg, "paystream_worker_events_total", "untrusted", cobo.EventOrderStatusUpdated))
	require.Equal(t, 1.0, counted(t, reg, "paystream_worker_events_total", "unchanged", cobo.EventOrderStatusUpdated))
	require.Equal(t, 1.0, counted(t, reg, "paystream_order_transitions_total", "Pending"))
}

// counted is the value of a counter vector's series with these label
// values, in label-name order.
func counted(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i, lp := range m.GetLabel() {
				if i >= len(labels) || lp.GetValue() != labels[i] {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestNewNamesTheCoboConfig(t *testing.T) {
	c := newCore(t)
	rules, err := allocation.ParseRules([]byte(`{"splits":[],"late_payments":"hold"}`))
	require.NoError(t, err)
	_, err = apply.New(c.js, c.orders, apply.Config{Verifier: c.signer.Verifier(t), Allocation: &apply.Allocation{Rules: rules}})
	var ce *apply.ConfigError
	require.ErrorAs(t, err, &ce)
	require.Equal(t, "Allocation.Cobo", ce.Field)
	require.ErrorContains(t, err, "apply config: Allocation.Cobo: cobo client config: Signer is required")
}

func TestReconcileOnlyRefusesEvents(t *testing.T) {
	c := newCore(t)
	p, err := apply.New(c.js, c.orders, apply.Config{ReconcileOnly: true})
	require.NoError(t, err)
	err = p.Process(context.Background(), event(t, c.signer, tu.OrderEvent("e-1", "O-apply-2", "M1001", "Pending", 100, "0")))
	require.ErrorIs(t, err, apply.ErrReconcileOnly)
}

// TestEventsAndReconciliationPlanAndPublishOnce runs both paths with the
// rules against the Cobo sandbox: each plans the splits once, and the
// intents are on the intent stream before the call returns.
func TestEventsAndReconciliationPlanAndPublishOnce(t *testing.T) {
	c := newCore(t)
	ctx := context.Background()
	require.NoError(t, allocation.EnsureResources(ctx, c.js, events.StreamConfig{}, allocation.DefaultIntentAck))
	seed := make([]byte, 32)
	_, err := rand.Read(seed)
	require.NoError(t, err)
	api, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	sim := cobosim.New(cobosim.Config{APIKeys: []string{api.APIKey()}, Logger: zerolog.Nop()})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	rules, err := allocation.ParseRules([]byte(`{"splits":[
		{"merchant_id":"*","destination_account":"developer","share":"0.10","description":"platform commission"}],
		"late_payments":"credit_merchant"}`))
	require.NoError(t, err)

	p, err := apply.Open(ctx, c.js, c.orders, apply.Config{
		Verifier:   c.signer.Verifier(t),
		Allocation: &apply.Allocation{Rules: rules, Cobo: cobo.ClientConfig{BaseURL: srv.URL + "/v2", Signer: api}},
	})
	require.NoError(t, err)

	// By event: Cobo's API confirms the order first.
	sim.PutOrder(tu.CoboOrder("O-apply-ev", "M1001", "Completed", 200, "102"))
	out, err := p.Apply(ctx, event(t, c.signer, tu.OrderEvent("e-ev", "O-apply-ev", "M1001", "Completed", 200, "102")))
	require.NoError(t, err)
	require.Len(t, out.Planned, 1)
	require.True(t, out.FirstCompleted)

	// By reconciliation: the same rules, the same publish.
	out, err = p.Reconcile(ctx, tu.CoboOrder("O-apply-rec", "M1001", "Completed", 200, "102"))
	require.NoError(t, err)
	require.Len(t, out.Planned, 1)
	out, err = p.Reconcile(ctx, tu.CoboOrder("O-apply-rec", "M1001", "Completed", 200, "102"))
	require.NoError(t, err)
	require.Empty(t, out.Planned, "planned once")

	stream, err := c.js.Stream(ctx, allocation.IntentStream)
	require.NoError(t, err)
	info, err := stream.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(2), info.State.Msgs, "one intent per planned item, published before the call returned")
}
