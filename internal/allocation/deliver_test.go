package allocation_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/allocation"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/testutil"
)

// The end-to-end behaviour against the sandbox is in
// internal/e2e/reconcile_test.go; these drive persisted batches through
// answers the sandbox cannot give on cue, with a scripted Cobo API and a
// real JetStream.

// scriptedCobo answers each call with the test's function; n counts the
// calls of that method from 1.
type scriptedCobo struct {
	mu       sync.Mutex
	onCreate func(n int, req cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error)
	onFind   func(n int, requestID string) (cobo.BatchAllocation, error)
	creates  []cobo.CreateBatchAllocationRequest
	finds    []string
}

func (s *scriptedCobo) CreateBatchAllocation(_ context.Context, req cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error) {
	s.mu.Lock()
	s.creates = append(s.creates, req)
	n, f := len(s.creates), s.onCreate
	s.mu.Unlock()
	return f(n, req)
}

func (s *scriptedCobo) FindBatchAllocation(_ context.Context, requestID string) (cobo.BatchAllocation, error) {
	s.mu.Lock()
	s.finds = append(s.finds, requestID)
	n, f := len(s.finds), s.onFind
	s.mu.Unlock()
	if f == nil {
		return cobo.BatchAllocation{}, fmt.Errorf("find batch %s: %w", requestID, cobo.ErrBatchNotFound)
	}
	return f(n, requestID)
}

func (s *scriptedCobo) GetBatchAllocation(_ context.Context, id string) (cobo.BatchAllocation, error) {
	return cobo.BatchAllocation{BatchAllocationID: id}, nil
}

func (s *scriptedCobo) calls() ([]cobo.CreateBatchAllocationRequest, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]cobo.CreateBatchAllocationRequest(nil), s.creates...), append([]string(nil), s.finds...)
}

func createdBatch(req cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error) {
	return cobo.BatchAllocation{BatchAllocationID: "b-" + req.RequestID, RequestID: req.RequestID, Status: cobo.BatchCompleted}, nil
}

var errLost = errors.New("POST /v2/payments/batch_allocations: context deadline exceeded")

type harness struct {
	b       *allocation.Batcher
	orders  *events.OrderStore
	batches jetstream.KeyValue
	claims  jetstream.KeyValue
	reg     *prometheus.Registry
}

// newHarness is a batcher on a real JetStream, with fast timings.
func newHarness(t *testing.T, api allocation.CoboAPI) *harness {
	t.Helper()
	h, _, js := newStores(t)
	var err error
	h.b, err = allocation.NewBatcher(context.Background(), js, api, h.orders, allocation.BatcherConfig{
		RecoverAfter: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond, SettleAfter: 400 * time.Millisecond, SendTimeout: time.Second,
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), Metrics: allocation.NewMetrics(h.reg),
	})
	require.NoError(t, err)
	return h
}

// newStores starts a JetStream server with the allocation resources and
// the orders bucket, and returns a harness of its stores without a
// batcher.
func newStores(t *testing.T) (*harness, *server.Server, jetstream.JetStream) {
	t.Helper()
	srv := testutil.StartJetStream(t)
	_, js := testutil.Connect(t, srv)
	ctx := context.Background()
	require.NoError(t, allocation.EnsureResources(ctx, js, events.StreamConfig{}, 5*time.Second))
	kv, err := events.EnsureOrdersBucket(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	h := &harness{orders: events.NewOrderStore(kv), reg: prometheus.NewRegistry()}
	h.batches, err = js.KeyValue(ctx, allocation.BatchesBucket)
	require.NoError(t, err)
	h.claims, err = js.KeyValue(ctx, allocation.ClaimsBucket)
	require.NoError(t, err)
	return h, srv, js
}

// plant writes an order with n planned Cobo items and returns them.
func (h *harness) plant(t *testing.T, orderID string, n int) []domain.AllocationItem {
	t.Helper()
	o := &domain.Order{OrderID: orderID}
	for i := range n {
		o.Allocations = append(o.Allocations, domain.AllocationItem{
			ID: fmt.Sprintf("%s:split:%d", orderID, i), Kind: domain.KindSplit, OrderID: orderID, Backend: domain.BackendCobo,
			TokenID: "ETH_USDT", Amount: decimal.NewFromInt(int64(i + 1)), Source: "M1001", Destination: fmt.Sprintf("M%d", 2000+i),
			Description: fmt.Sprintf("split %d %s", i, orderID), Status: domain.AllocPlanned,
		})
	}
	_, err := h.orders.Put(context.Background(), o, 0)
	require.NoError(t, err)
	return o.Allocations
}

// persist writes a ready batch of items and their claims as a batcher's
// flush leaves them (edit changes it first), and returns its request_id.
func (h *harness) persist(t *testing.T, items []domain.AllocationItem, edit func(*allocation.Batch)) string {
	t.Helper()
	ctx := context.Background()
	var id [16]byte
	_, _ = rand.Read(id[:])
	rid := hex.EncodeToString(id[:])
	now := time.Now().UTC()
	batch := allocation.Batch{RequestID: rid, Status: allocation.BatchReady, ItemsSince: now, CreatedAt: now, UpdatedAt: now}
	for _, it := range items {
		it.RequestID = rid
		batch.Items = append(batch.Items, it)
		_, err := h.claims.Create(ctx, events.Token(it.ID), []byte(rid))
		require.NoError(t, err)
	}
	if edit != nil {
		edit(&batch)
	}
	v, err := json.Marshal(batch)
	require.NoError(t, err)
	_, err = h.batches.Create(ctx, rid, v)
	require.NoError(t, err)
	return rid
}

// batch reads a persisted batch; nil once it is retired.
func (h *harness) batch(t *testing.T, requestID string) *allocation.Batch {
	t.Helper()
	e, err := h.batches.Get(context.Background(), requestID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	require.NoError(t, err)
	var b allocation.Batch
	require.NoError(t, json.Unmarshal(e.Value(), &b))
	return &b
}

func (h *harness) items(t *testing.T, orderID string) []domain.AllocationItem {
	t.Helper()
	o, _, err := h.orders.Get(context.Background(), orderID)
	require.NoError(t, err)
	return o.Allocations
}

func (h *harness) statuses(t *testing.T, orderID string) []string {
	t.Helper()
	var out []string
	for _, it := range h.items(t, orderID) {
		out = append(out, it.Status)
	}
	return out
}

func (h *harness) claim(t *testing.T, itemID string) string {
	t.Helper()
	e, err := h.claims.Get(context.Background(), events.Token(itemID))
	require.NoError(t, err)
	return string(e.Value())
}

// recoverUntil runs Recover, as every batcher does, until cond holds.
func (h *harness) recoverUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, func() bool {
		h.b.Recover(context.Background(), 0)
		return cond()
	}, 10*time.Second, 20*time.Millisecond, what)
}

// metric reads the sample of name whose labels include labels; 0 if none.
func (h *harness) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	return gathered(t, h.reg, name, labels)
}

func gathered(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || (lp.GetName() == k && lp.GetValue() == v)
				}
				if !found {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func all(status string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = status
	}
	return out
}

// TestRefusalAfterLostAnswerWaitsToSettle: the first send gets no answer,
// the resend a 400. The batch may exist, so it is looked up, never sent
// again; an empty lookup proves nothing until SettleAfter has passed since
// the last send. Then it is certainly refused: split in halves under new
// request_ids, which take over the claims before their first send.
func TestRefusalAfterLostAnswerWaitsToSettle(t *testing.T) {
	api := &scriptedCobo{onCreate: func(n int, req cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error) {
		switch n {
		case 1:
			return cobo.BatchAllocation{}, errLost
		case 2:
			return cobo.BatchAllocation{}, &cobo.APIError{HTTPStatus: http.StatusBadRequest, Code: 2006, Message: "Invalid parameter"}
		}
		return createdBatch(req)
	}}
	h := newHarness(t, api)
	parent := h.persist(t, h.plant(t, "O-settle", 2), nil)
	h.b.Recover(context.Background(), 0)
	b := h.batch(t, parent)
	require.Equal(t, allocation.BatchReady, b.Status)
	require.True(t, b.MayExist)
	require.Equal(t, allocation.WaitProvider, b.Waiting)

	h.recoverUntil(t, "the resend refused", func() bool { return h.batch(t, parent).Status == allocation.BatchChecking })
	b = h.batch(t, parent)
	require.Equal(t, allocation.WaitSettling, b.Waiting)
	require.Contains(t, b.Rejection, "error_code 2006")
	creates, finds := api.calls()
	require.Len(t, creates, 2)
	require.Equal(t, []string{parent}, finds)
	require.Equal(t, all(domain.AllocPlanned, 2), h.statuses(t, "O-settle"), "nothing is failed while Cobo may hold the batch")

	h.recoverUntil(t, "the items completed", func() bool {
		return fmt.Sprint(h.statuses(t, "O-settle")) == fmt.Sprint(all(domain.AllocCompleted, 2))
	})
	creates, finds = api.calls()
	require.Len(t, finds, 2, "looked up once more, after settling")
	require.Len(t, creates, 4, "two sends of the batch, one of each half")
	require.Equal(t, parent, creates[1].RequestID)
	got := h.items(t, "O-settle")
	halves := []string{creates[2].RequestID, creates[3].RequestID}
	require.NotContains(t, halves, parent)
	require.NotEqual(t, halves[0], halves[1])
	require.ElementsMatch(t, halves, []string{got[0].RequestID, got[1].RequestID})
	for _, it := range got {
		require.Equal(t, it.RequestID, h.claim(t, it.ID), "the claim moved to the half that sent the item")
	}
	require.Equal(t, float64(1), h.metric(t, "paystream_allocation_batch_splits_total", nil))
	require.Nil(t, h.batch(t, parent), "the split batch is retired")
}

// TestCredentialRefusalsWait: Cobo refuses the key on sends and lookups.
// The items wait planned, the refusals are counted, the batch is gauged as
// waiting on credentials; once the key works the same request_id is sent
// and the items complete.
func TestCredentialRefusalsWait(t *testing.T) {
	var mu sync.Mutex
	fixed := false
	isFixed := func() bool { mu.Lock(); defer mu.Unlock(); return fixed }
	refused := &cobo.APIError{HTTPStatus: http.StatusUnauthorized, Code: 2024, Message: "API key authentication failed"}
	api := &scriptedCobo{
		onCreate: func(_ int, req cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error) {
			if isFixed() {
				return createdBatch(req)
			}
			return cobo.BatchAllocation{}, refused
		},
		onFind: func(_ int, requestID string) (cobo.BatchAllocation, error) {
			if isFixed() {
				return cobo.BatchAllocation{}, fmt.Errorf("find batch %s: %w", requestID, cobo.ErrBatchNotFound)
			}
			return cobo.BatchAllocation{}, refused
		},
	}
	h := newHarness(t, api)
	rid := h.persist(t, h.plant(t, "O-cred", 3), nil)
	h.recoverUntil(t, "several refused sends", func() bool {
		creates, _ := api.calls()
		return len(creates) >= 3
	})
	b := h.batch(t, rid)
	require.Equal(t, allocation.BatchReady, b.Status)
	require.Equal(t, allocation.WaitCredentials, b.Waiting)
	require.Contains(t, b.LastError, "error_code 2024")
	require.Equal(t, all(domain.AllocPlanned, 3), h.statuses(t, "O-cred"))
	require.GreaterOrEqual(t, h.metric(t, "paystream_cobo_credential_errors_total", nil), float64(3))
	h.b.Recover(context.Background(), time.Hour) // a full scan sets the gauges
	require.Equal(t, float64(1), h.metric(t, "paystream_allocation_batches_waiting", map[string]string{"reason": "credentials"}))

	mu.Lock()
	fixed = true
	mu.Unlock()
	h.recoverUntil(t, "the items completed", func() bool {
		return fmt.Sprint(h.statuses(t, "O-cred")) == fmt.Sprint(all(domain.AllocCompleted, 3))
	})
	creates, _ := api.calls()
	for _, c := range creates {
		require.Equal(t, rid, c.RequestID, "every send carries the batch's one request_id")
	}
	h.b.Recover(context.Background(), 0)
	require.Zero(t, h.metric(t, "paystream_allocation_batches_waiting", map[string]string{"reason": "credentials"}))
	require.Zero(t, h.metric(t, "paystream_allocation_items_refused_total", map[string]string{"backend": "cobo"}))
}

// TestCrashMidSendIsReconciled: a batcher died during a send (the attempt
// is persisted, its answer never was). The resend is refused, but the
// lookup finds the batch the first send created, in the seeds' shape
// without a status: the item is completed, not failed.
func TestCrashMidSendIsReconciled(t *testing.T) {
	api := &scriptedCobo{
		onCreate: func(int, cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error) {
			return cobo.BatchAllocation{}, &cobo.APIError{HTTPStatus: http.StatusConflict, Code: 2006, Message: "request in progress"}
		},
		onFind: func(_ int, requestID string) (cobo.BatchAllocation, error) {
			return cobo.BatchAllocation{BatchAllocationID: "b-1", RequestID: requestID}, nil
		},
	}
	h := newHarness(t, api)
	rid := h.persist(t, h.plant(t, "O-crash", 1), func(b *allocation.Batch) { b.Attempts, b.InFlight = 1, true })
	h.recoverUntil(t, "the item completed", func() bool { return h.items(t, "O-crash")[0].Status == domain.AllocCompleted })
	it := h.items(t, "O-crash")[0]
	require.Equal(t, "b-1", it.ProviderID)
	require.Equal(t, rid, it.RequestID)
	creates, finds := api.calls()
	require.Len(t, creates, 1)
	require.Equal(t, []string{rid}, finds)
	require.Nil(t, h.batch(t, rid))
}

// TestDuplicateCodeOnFirstSendWithoutBatchFails: the only send of a
// one-item batch is answered 30001 and the client's lookup finds nothing:
// certainly refused, the item fails with Cobo's answer, nothing is resent.
func TestDuplicateCodeOnFirstSendWithoutBatchFails(t *testing.T) {
	api := &scriptedCobo{onCreate: func(_ int, req cobo.CreateBatchAllocationRequest) (cobo.BatchAllocation, error) {
		apiErr := &cobo.APIError{HTTPStatus: http.StatusBadRequest, Code: 30001, Message: "The pricing plan does not support this feature"}
		return cobo.BatchAllocation{}, fmt.Errorf("create batch %s: %w; looking it up by request_id: %w", req.RequestID, apiErr,
			fmt.Errorf("find batch %s: %w", req.RequestID, cobo.ErrBatchNotFound))
	}}
	h := newHarness(t, api)
	rid := h.persist(t, h.plant(t, "O-30001", 1), nil)
	h.b.Recover(context.Background(), 0)
	it := h.items(t, "O-30001")[0]
	require.Equal(t, domain.AllocFailed, it.Status)
	require.Contains(t, it.Reason, "error_code 30001")
	require.Contains(t, it.Reason, "pricing plan")
	require.Equal(t, rid, it.RequestID)
	require.Empty(t, it.ProviderID)
	h.b.Recover(context.Background(), 0)
	creates, _ := api.calls()
	require.Len(t, creates, 1)
	require.Equal(t, float64(1), h.metric(t, "paystream_allocation_items_refused_total", map[string]string{"backend": "cobo"}))
	require.Nil(t, h.batch(t, rid))
}
