package reconcile_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
	"github.com/paystream/paystream/internal/httpretry"
	"github.com/paystream/paystream/internal/reconcile"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	tu "github.com/paystream/paystream/internal/testutil"
)

// fixture is a real embedded JetStream (orders and point buckets), the
// Cobo simulator behind paystream's real client, and the handlers' core
// applying what a pass finds.
type fixture struct {
	js     jetstream.JetStream
	points jetstream.KeyValue
	orders *events.OrderStore
	sim    *cobosim.Sim
	lister *countingLister
	core   *handlers.Handler
}

// countingLister counts the pages asked for and remembers their cursors.
type countingLister struct {
	reconcile.Lister
	mu     sync.Mutex
	afters []string
}

func (c *countingLister) ListOrders(ctx context.Context, req cobo.ListOrdersRequest) (cobo.OrderList, error) {
	c.mu.Lock()
	c.afters = append(c.afters, req.After)
	c.mu.Unlock()
	return c.Lister.ListOrders(ctx, req)
}

func (c *countingLister) pages() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.afters)
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	_, js := tu.Connect(t, tu.StartJetStream(t))
	ctx := context.Background()
	kv, err := events.EnsureOrdersBucket(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	points, err := reconcile.EnsureBucket(ctx, js, events.StreamConfig{})
	require.NoError(t, err)
	seed := make([]byte, 32)
	_, err = rand.Read(seed)
	require.NoError(t, err)
	signer, err := cobo.NewAPISigner(hex.EncodeToString(seed))
	require.NoError(t, err)
	sim := cobosim.New(cobosim.Config{APIKeys: []string{signer.APIKey()}, Logger: zerolog.Nop()})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	client, err := cobo.NewClient(cobo.ClientConfig{BaseURL: srv.URL + "/v2", Signer: signer, Config: httpretry.Config{MaxAttempts: 1}})
	require.NoError(t, err)
	orders := events.NewOrderStore(kv)
	return &fixture{js: js, points: points, orders: orders, sim: sim, lister: &countingLister{Lister: client}, core: handlers.New(orders)}
}

func (f *fixture) reconciler(t *testing.T, cfg reconcile.Config) *reconcile.Reconciler {
	t.Helper()
	r, err := reconcile.New(f.points, f.lister, f.orders, f.core, cfg)
	require.NoError(t, err)
	return r
}

// putOrder registers a Completed order with Cobo, created and last
// updated at the given times.
func (f *fixture) putOrder(id string, created, updated time.Time) {
	notLate := false
	o := tu.CoboOrder(id, "M1001", "Completed", updated.Unix(), "102.000001", tu.CoboTx("t-"+id, "0x"+id, "102.000001", &notLate))
	o.CreatedTimestamp = cobo.Int64(created.Unix())
	f.sim.PutOrder(o)
}

func (f *fixture) storePoint(t *testing.T, at time.Time) {
	t.Helper()
	b, err := json.Marshal(reconcile.Point{Time: at, UpdatedAt: at})
	require.NoError(t, err)
	_, err = f.points.Put(context.Background(), reconcile.PointKey, b)
	require.NoError(t, err)
}

func (f *fixture) known(t *testing.T, id string) bool {
	t.Helper()
	_, _, err := f.orders.Get(context.Background(), id)
	if errors.Is(err, domain.ErrNotFound) {
		return false
	}
	require.NoError(t, err)
	return true
}

// TestPassStopsAtThePoint lists orders created an hour apart, newest
// first, three per page: a pass starting from the stored point minus the
// overlap checks and repairs exactly the orders newer than that, stops
// after the page where an older one appears, and stores its start as the
// new point; the next pass finds nothing missing.
func TestPassStopsAtThePoint(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	for i := range 12 {
		at := now.Add(-time.Duration(i) * time.Hour)
		f.putOrder(fmt.Sprintf("O-%02d", i), at, at)
	}
	f.storePoint(t, now.Add(-5*time.Hour-30*time.Minute))
	reg := prometheus.NewRegistry()
	m := reconcile.NewMetrics(reg)
	r := f.reconciler(t, reconcile.Config{PageSize: 3, Overlap: time.Hour, Metrics: m})

	var found []reconcile.Finding
	sum, err := r.Pass(context.Background(), reconcile.PassOptions{Report: func(x reconcile.Finding) error {
		found = append(found, x)
		return nil
	}})
	require.NoError(t, err)
	// From = point − overlap = now − 6h30m: orders 0 to 6 are newer.
	require.Equal(t, 7, sum.Checked)
	require.Equal(t, 7, sum.Missing)
	require.Equal(t, 7, sum.Repaired)
	require.Equal(t, 3, sum.Pages, "order 7 is on the third page, which ends the pass")
	require.Equal(t, []string{"", "O-02", "O-05"}, f.lister.afters)
	require.True(t, sum.PointAdvanced)
	for i := range 12 {
		require.Equal(t, i <= 6, f.known(t, fmt.Sprintf("O-%02d", i)), "order %d", i)
	}
	require.Len(t, found, 7)
	require.Equal(t, "O-00", found[0].OrderID)
	require.Equal(t, reconcile.ResultRepaired, found[0].Result)
	require.Equal(t, []string{handlers.GapFinalStatus, handlers.GapTransactions}, found[0].Missing)
	require.Equal(t, "Completed", found[0].StatusTo)
	require.True(t, found[0].FirstCompleted)
	require.Empty(t, found[0].Status, "paystream never saw it")

	pt, _, err := r.LoadPoint(context.Background())
	require.NoError(t, err)
	require.True(t, pt.Time.Equal(sum.Start), "the point is the pass's start")
	require.Equal(t, 7.0, metric(t, reg, "paystream_reconcile_orders_repaired_total"))
	age := metric(t, reg, "paystream_reconcile_point_age_seconds")
	require.GreaterOrEqual(t, age, 0.0)
	require.Less(t, age, 60.0)

	// The next pass looks back only an overlap from the new point: the
	// newest order (the next one is just over an hour old), repaired
	// already.
	f.lister.afters = nil
	sum, err = r.Pass(context.Background(), reconcile.PassOptions{})
	require.NoError(t, err)
	require.Equal(t, 1, sum.Checked)
	require.Zero(t, sum.Missing)
	require.Equal(t, 1, sum.Pages)
	require.Equal(t, 8.0, metric(t, reg, "paystream_reconcile_orders_checked_total"))
}

// metric sums the samples of one metric family of reg.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var v float64
		for _, m := range mf.GetMetric() {
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
		return v
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestPassChecksNewerOrdersOnTheLastPage: Cobo lists by creation, so an
// order created long ago but updated since sits among older ones; on the
// page where the point is reached it is still checked, and an order
// without timestamps is never taken for an old one.
func TestPassChecksNewerOrdersOnTheLastPage(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	f.putOrder("O-new", now, now)
	f.putOrder("O-old", now.Add(-10*time.Hour), now.Add(-10*time.Hour))
	f.putOrder("O-updated", now.Add(-11*time.Hour), now.Add(-time.Minute))
	f.putOrder("O-older", now.Add(-12*time.Hour), now.Add(-12*time.Hour))
	undated := tu.CoboOrder("O-undated", "M1001", "Expired", 0, "0")
	undated.CreatedTimestamp, undated.UpdatedTimestamp = 0, 0
	f.sim.PutOrder(undated)
	r := f.reconciler(t, reconcile.Config{PageSize: 50, Lookback: time.Hour})
	sum, err := r.Pass(context.Background(), reconcile.PassOptions{})
	require.NoError(t, err)
	require.Equal(t, 1, sum.Pages)
	require.Equal(t, 3, sum.Checked)
	require.True(t, f.known(t, "O-new"))
	require.True(t, f.known(t, "O-updated"))
	require.True(t, f.known(t, "O-undated"))
	require.False(t, f.known(t, "O-old"))
	require.False(t, f.known(t, "O-older"))
}

// TestPointMovesOnlyForward: a dry run changes nothing; a pass from a
// later Since than the stored point would leave a gap, so it keeps the
// point; concurrent passes all succeed and the point ends at the latest
// start; a failing list keeps the point.
func TestPointMovesOnlyForward(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	f.putOrder("O-1", now.Add(-time.Hour), now.Add(-time.Hour))
	old := now.Add(-3 * time.Hour)
	f.storePoint(t, old)
	r := f.reconciler(t, reconcile.Config{Overlap: time.Hour})
	ctx := context.Background()

	var found []reconcile.Finding
	sum, err := r.Pass(ctx, reconcile.PassOptions{DryRun: true, Report: func(x reconcile.Finding) error {
		found = append(found, x)
		return nil
	}})
	require.NoError(t, err)
	require.Equal(t, 1, sum.Missing)
	require.Len(t, found, 1)
	require.Equal(t, reconcile.ResultMissing, found[0].Result)
	require.Len(t, found[0].LackingTransactions, 1)
	require.False(t, f.known(t, "O-1"), "a dry run applies nothing")
	require.False(t, sum.PointAdvanced)

	sum, err = r.Pass(ctx, reconcile.PassOptions{Since: now.Add(-2 * time.Hour)})
	require.NoError(t, err)
	require.Equal(t, 1, sum.Repaired)
	require.False(t, sum.PointAdvanced, "from 2h ago, the hour after the point was not covered")
	pt, _, err := r.LoadPoint(ctx)
	require.NoError(t, err)
	require.True(t, pt.Time.Equal(old))

	var wg sync.WaitGroup
	var advanced atomic.Int32
	starts := make(chan time.Time, 4)
	for range 4 {
		other := f.reconciler(t, reconcile.Config{Overlap: time.Hour})
		wg.Go(func() {
			sum, err := other.Pass(ctx, reconcile.PassOptions{})
			if err != nil {
				t.Errorf("concurrent pass: %v", err)
				return
			}
			if sum.PointAdvanced {
				advanced.Add(1)
			}
			starts <- sum.Start
		})
	}
	wg.Wait()
	close(starts)
	var latest time.Time
	for s := range starts {
		if s.After(latest) {
			latest = s
		}
	}
	require.GreaterOrEqual(t, advanced.Load(), int32(1))
	pt, _, err = r.LoadPoint(ctx)
	require.NoError(t, err)
	require.True(t, pt.Time.Equal(latest), "the point is the latest start, whichever pass stored last")

	failing := &failingLister{}
	bad, err := reconcile.New(f.points, failing, f.orders, f.core, reconcile.Config{})
	require.NoError(t, err)
	_, err = bad.Pass(ctx, reconcile.PassOptions{})
	require.ErrorContains(t, err, "cobo is down")
	again, _, err := r.LoadPoint(ctx)
	require.NoError(t, err)
	require.True(t, again.Time.Equal(pt.Time))
}

type failingLister struct{}

func (failingLister) ListOrders(context.Context, cobo.ListOrdersRequest) (cobo.OrderList, error) {
	return cobo.OrderList{}, errors.New("cobo is down")
}

// stuckLister answers a full page with the same cursor forever.
type stuckLister struct{ page cobo.OrderList }

func (s stuckLister) ListOrders(context.Context, cobo.ListOrdersRequest) (cobo.OrderList, error) {
	return s.page, nil
}

// TestPassEndsOnABadCursor: a list whose cursor never moves ends the pass
// with an error instead of looping.
func TestPassEndsOnABadCursor(t *testing.T) {
	f := newFixture(t)
	var page cobo.OrderList
	now := time.Now().Unix()
	require.NoError(t, json.Unmarshal([]byte(fmt.Sprintf(`{"data":[{"order_id":"O-loop","status":"Pending","created_timestamp":%d}],"pagination":{"after":"O-loop"}}`, now)), &page))
	r, err := reconcile.New(f.points, stuckLister{page}, f.orders, f.core, reconcile.Config{PageSize: 1})
	require.NoError(t, err)
	_, err = r.Pass(context.Background(), reconcile.PassOptions{})
	require.ErrorContains(t, err, "did not move")
	r, err = reconcile.New(f.points, stuckLister{page}, f.orders, f.core, reconcile.Config{PageSize: 1, MaxPages: 1})
	require.NoError(t, err)
	_, err = r.Pass(context.Background(), reconcile.PassOptions{})
	require.ErrorContains(t, err, "MaxPages")
}

// TestRunPassesPeriodically: Run passes on its own schedule, moving the
// point, and stops with its context; Off runs none.
func TestRunPassesPeriodically(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	f.putOrder("O-run", now, now)
	off := f.reconciler(t, reconcile.Config{Every: 10 * time.Millisecond, Off: true})
	require.NoError(t, off.Run(context.Background()), "Off returns at once")

	r := f.reconciler(t, reconcile.Config{Every: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	require.Eventually(t, func() bool {
		pt, _, err := r.LoadPoint(context.Background())
		require.NoError(t, err)
		return !pt.Time.IsZero()
	}, 10*time.Second, 20*time.Millisecond, "a pass completed and stored the point")
	cancel()
	require.NoError(t, <-done)
	require.True(t, f.known(t, "O-run"))
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  reconcile.Config
		want string
	}{
		{reconcile.Config{Every: -time.Second}, "Every"},
		{reconcile.Config{Overlap: -time.Second}, "Overlap"},
		{reconcile.Config{PageSize: 51}, "PageSize"},
		{reconcile.Config{Statuses: []string{"A,B"}}, "Statuses"},
	} {
		require.ErrorContains(t, c.cfg.WithDefaults().Validate(), c.want)
	}
	require.NoError(t, reconcile.Config{}.WithDefaults().Validate())
}
