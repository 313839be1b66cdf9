// Package reconcile closes what webhooks missed. Cobo gives up on a webhook
// after 10 attempts (a long outage is enough), so paystream does not rely on
// notifications alone: a Reconciler pages through Cobo's pay-in orders
// (GET /payments/orders), newest first, back to the last reconciled point,
// and hands every order Cobo has in a final status, or with completed
// transactions paystream lacks, to an Applier: the apply core
// (apply.Processor), which applies it through the same rules as a webhook
// event (handlers.Handler.Reconcile) and publishes the allocation items it
// planned. Concurrent passes, by one process or several, are harmless: the
// state changes by compare-and-set and every id is deterministic.
package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
)

// The reconciled point is kept in a bucket of its own.
const (
	// Bucket holds the reconciled points.
	Bucket = "paystream_reconcile"
	// PointKey is the key of the point of Cobo's pay-in orders.
	PointKey = "cobo_orders"
)

// Defaults for Config.
const (
	DefaultEvery = 10 * time.Minute
	// DefaultOverlap covers the longest an order lives (Cobo's expired_in
	// is at most 3 h) plus an hour: an order whose final status came after
	// the point was created at most that long before it, so a pass finds it
	// whether Cobo lists orders by creation or by update time.
	DefaultOverlap = 4 * time.Hour
	// DefaultLookback is how far back the first pass ever goes.
	DefaultLookback = 24 * time.Hour
	DefaultPageSize = cobo.MaxListLimit
	// DefaultMaxPages bounds one pass, should the cursor never end.
	DefaultMaxPages     = 10000
	DefaultApplyTimeout = 30 * time.Second
)

// Config configures a Reconciler.
type Config struct {
	// Every is how often passes run, fleet-wide: a worker whose turn comes
	// skips its pass when another one started less than Every/2 ago.
	Every time.Duration
	// Off turns the periodic passes off (-reconcile-every 0); Pass still
	// works.
	Off bool
	// Overlap is how far before the reconciled point a pass looks again,
	// so that an order updated at the boundary is not missed.
	Overlap time.Duration
	// Lookback is how far back a pass goes when no point is stored yet.
	Lookback time.Duration
	// PageSize is the limit of each list request (1 to cobo.MaxListLimit).
	PageSize int
	// MaxPages bounds the pages of one pass.
	MaxPages int
	// Statuses, when set, lists only orders in these statuses
	// (cobo.FinalOrderStatuses for finished orders only); all by default,
	// so that deposits of unfinished orders are recorded too.
	Statuses []string
	// ApplyTimeout bounds applying one order.
	ApplyTimeout time.Duration
	// Retention is the workers' (-retention): no pass looks back past its
	// horizon (Keep minus Margin ago), where state may have expired, so
	// that an expired order is never planned again. A Since before it is
	// refused (ErrBeyondHorizon); a periodic pass whose point is older
	// starts at the horizon.
	Retention events.Retention
	// Logger gets a line per repaired order and per pass that found
	// anything; it never sees secrets.
	Logger zerolog.Logger
	// Metrics, when set, counts what passes do.
	Metrics *Metrics
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Every == 0 {
		c.Every = DefaultEvery
	}
	if c.Overlap == 0 {
		c.Overlap = DefaultOverlap
	}
	if c.Lookback == 0 {
		c.Lookback = DefaultLookback
	}
	if c.PageSize == 0 {
		c.PageSize = DefaultPageSize
	}
	if c.MaxPages == 0 {
		c.MaxPages = DefaultMaxPages
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = DefaultApplyTimeout
	}
	c.Retention = c.Retention.WithDefaults()
	return c
}

// Validate reports the first invalid field by name.
func (c Config) Validate() error {
	switch {
	case c.Every <= 0:
		return fmt.Errorf("Every must be positive, got %s", c.Every)
	case c.Overlap < 0:
		return fmt.Errorf("Overlap must not be negative, got %s", c.Overlap)
	case c.Lookback <= 0:
		return fmt.Errorf("Lookback must be positive, got %s", c.Lookback)
	case c.PageSize < 1 || c.PageSize > cobo.MaxListLimit:
		return fmt.Errorf("PageSize must be from 1 to %d, got %d", cobo.MaxListLimit, c.PageSize)
	case c.MaxPages < 1:
		return fmt.Errorf("MaxPages must be positive, got %d", c.MaxPages)
	case c.ApplyTimeout <= 0:
		return fmt.Errorf("ApplyTimeout must be positive, got %s", c.ApplyTimeout)
	}
	if err := (cobo.ListOrdersRequest{Statuses: c.Statuses}).Validate(); err != nil {
		return fmt.Errorf("Statuses: %w", err)
	}
	if err := c.Retention.Validate(); err != nil {
		return fmt.Errorf("Retention.%w", err)
	}
	return nil
}

// Lister reads pages of Cobo's pay-in orders with paystream's own API key
// (cobo.Client).
type Lister interface {
	ListOrders(ctx context.Context, req cobo.ListOrdersRequest) (cobo.OrderList, error)
}

// OrderReader reads paystream's state of an order.
type OrderReader interface {
	// Get returns the order, or an error wrapping domain.ErrNotFound.
	Get(ctx context.Context, orderID string) (*domain.Order, uint64, error)
}

// Applier applies an order read from Cobo's API through the core every
// webhook goes through, and publishes what it planned (apply.Processor).
type Applier interface {
	Reconcile(ctx context.Context, d cobo.OrderData) (handlers.Outcome, error)
}

// EnsureBucket returns the bucket of reconciled points, creating it when it
// does not exist (never changing an existing one, see events.EnsureBucket).
func EnsureBucket(ctx context.Context, js jetstream.JetStream, stream events.StreamConfig) (jetstream.KeyValue, error) {
	stream = stream.WithDefaults()
	return stream.EnsureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "how far reconciliation with Cobo's order list has come",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    stream.Replicas,
	})
}

// OpenBucket binds the bucket of reconciled points, which a worker with
// -rules creates.
func OpenBucket(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w (has a worker with -rules run yet?)", Bucket, err)
	}
	return kv, nil
}

// Point is the value of PointKey.
type Point struct {
	// Time is when the last complete pass started: every order Cobo had
	// listed by then, back to the point before it minus the overlap, has
	// been reconciled.
	Time time.Time `json:"point"`
	// UpdatedAt is when that pass stored it.
	UpdatedAt time.Time `json:"updated_at"`
}

// Reconciler runs reconciliation passes. It is safe for concurrent use,
// and any number of processes may run passes at once.
type Reconciler struct {
	cfg     Config
	kv      jetstream.KeyValue
	lister  Lister
	orders  OrderReader
	apply   Applier
	started time.Time
	// point is the newest point this process read or wrote (unix nanos, 0
	// when none), for the age gauge.
	point atomic.Int64
	now   func() time.Time
}

// New returns a Reconciler keeping its point in kv (EnsureBucket or
// OpenBucket).
func New(kv jetstream.KeyValue, lister Lister, orders OrderReader, apply Applier, cfg Config) (*Reconciler, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("reconcile config: %w", err)
	}
	switch {
	case kv == nil:
		return nil, errors.New("reconcile: the point bucket is required")
	case lister == nil || orders == nil || apply == nil:
		return nil, errors.New("reconcile: Lister, OrderReader and Applier are required")
	}
	r := &Reconciler{cfg: cfg, kv: kv, lister: lister, orders: orders, apply: apply, started: time.Now(), now: time.Now}
	if cfg.Metrics != nil {
		cfg.Metrics.watch(r)
	}
	return r, nil
}

// Config returns the configuration in effect (defaults applied).
func (r *Reconciler) Config() Config { return r.cfg }

// LoadPoint returns the stored point and its revision; a zero Point and
// revision 0 when none is stored yet.
func (r *Reconciler) LoadPoint(ctx context.Context) (Point, uint64, error) {
	e, err := r.kv.Get(ctx, PointKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Point{}, 0, nil
	}
	if err != nil {
		return Point{}, 0, fmt.Errorf("read the reconciled point: %w", err)
	}
	var p Point
	if err := json.Unmarshal(e.Value(), &p); err != nil {
		return Point{}, 0, fmt.Errorf("decode the reconciled point at revision %d: %w", e.Revision(), err)
	}
	r.notePoint(p.Time)
	return p, e.Revision(), nil
}

func (r *Reconciler) notePoint(t time.Time) {
	if t.IsZero() {
		return
	}
	for {
		cur := r.point.Load()
		if cur >= t.UnixNano() || r.point.CompareAndSwap(cur, t.UnixNano()) {
			return
		}
	}
}

// pointAge is how old the newest known point is; before any is known, how
// long this process has been unable to learn one.
func (r *Reconciler) pointAge() time.Duration {
	if p := r.point.Load(); p != 0 {
		return r.now().Sub(time.Unix(0, p))
	}
	return r.now().Sub(r.started)
}

// PassOptions tune one pass.
type PassOptions struct {
	// Since starts the pass at this time instead of the stored point minus
	// the overlap (or the lookback without one). A Since before the
	// retention horizon is refused (ErrBeyondHorizon).
	Since time.Time
	// DryRun finds and reports, but applies nothing and keeps the point.
	DryRun bool
	// Report, when set, receives each order found missing, after it was
	// applied. An error from it ends the pass.
	Report func(Finding) error
}

// Finding is one order a pass found missing, and what applying it did.
type Finding struct {
	OrderID    string `json:"order_id"`
	CoboStatus string `json:"cobo_status"`
	// Status is paystream's status before, "" when it never saw the order.
	Status string `json:"paystream_status,omitempty"`
	// Missing names the gaps (handlers.GapFinalStatus, GapTransactions).
	Missing []string `json:"missing"`
	// LackingTransactions are Cobo's transactions paystream lacked.
	LackingTransactions []TxRef `json:"lacking_transactions,omitempty"`
	// Result is repaired (every gap closed by this pass), unchanged
	// (nothing to write: closed meanwhile, e.g. by another worker),
	// unresolved (a gap remains: see Unclassified), error, or missing
	// (a dry run).
	Result         string   `json:"result"`
	StatusTo       string   `json:"status_to,omitempty"`
	FirstCompleted bool     `json:"first_completed,omitempty"`
	LateRecorded   []string `json:"late_recorded,omitempty"`
	Planned        []string `json:"planned,omitempty"`
	// Unclassified are transactions recorded, not credited, by this pass
	// or an earlier one: an operator decides.
	Unclassified []domain.UnclassifiedTx `json:"unclassified,omitempty"`
	Error        string                  `json:"error,omitempty"`
}

// Finding results.
const (
	ResultRepaired   = "repaired"
	ResultUnchanged  = "unchanged"
	ResultUnresolved = "unresolved"
	ResultError      = "error"
	ResultMissing    = "missing"
)

// TxRef is a transaction as Cobo's order lists it.
type TxRef struct {
	TxID   string `json:"tx_id"`
	TxHash string `json:"tx_hash,omitempty"`
	Amount string `json:"amount"`
	Status string `json:"status"`
	IsLate *bool  `json:"is_late,omitempty"`
}

// Summary is what one pass did.
type Summary struct {
	// From is the oldest time the pass looked at.
	From time.Time `json:"from"`
	// Start is when it started: the point it stores when complete.
	Start time.Time `json:"start"`
	Pages int       `json:"pages"`
	// Checked are the orders compared with paystream's state.
	Checked int `json:"checked"`
	// Missing are those Cobo has final while paystream does not, or with
	// transactions paystream lacks.
	Missing int `json:"missing"`
	// Repaired are the missing ones whose every gap the pass closed.
	Repaired int `json:"repaired"`
	// Unresolved are the missing ones a gap of which remains.
	Unresolved int `json:"unresolved"`
	// Errors are orders that could not be checked or applied; the point
	// does not move past them.
	Errors int `json:"errors"`
	// Invalid are list items that are not usable orders (logged).
	Invalid int `json:"invalid"`
	// PointAdvanced is true when the pass stored Start as the point.
	PointAdvanced bool `json:"point_advanced"`
}

// ErrIncomplete means a pass could not check or apply some orders; it
// ran to the end and kept the point where it was.
var ErrIncomplete = errors.New("reconciliation incomplete")

// ErrBeyondHorizon means a pass was asked to look back past the retention
// horizon (Config.Retention), where order state may have expired.
var ErrBeyondHorizon = errors.New("before the retention horizon")

// CheckSince refuses a Since before the retention horizon at now, with an
// error wrapping ErrBeyondHorizon.
func (c Config) CheckSince(since, now time.Time) error {
	c = c.WithDefaults()
	if floor := c.Retention.Horizon(now); since.Before(floor) {
		return fmt.Errorf("%w: %s is before %s (-retention %s minus %s): orders settled before it may have expired, and would be planned again",
			ErrBeyondHorizon, since.UTC().Format(time.RFC3339), floor.UTC().Format(time.RFC3339), c.Retention.Keep, c.Retention.Margin)
	}
	return nil
}

// Pass pages newest first through Cobo's orders back to the point (see
// PassOptions.Since) and applies every order found missing. Orders on the
// page where the first older order appears are still checked when newer
// than the point, and an order without timestamps is always checked. When
// every order was checked and applied, the point becomes the pass's start
// time (by compare-and-set, never moving back, and only when the pass
// began at or before the stored point, so a pass with a later Since leaves
// no gap behind). It returns an error wrapping ErrIncomplete after the end
// when some orders failed, and other errors when listing failed.
func (r *Reconciler) Pass(ctx context.Context, opts PassOptions) (Summary, error) {
	sum := Summary{Start: r.now().UTC()}
	m := r.cfg.Metrics
	pt, _, err := r.LoadPoint(ctx)
	if err != nil {
		m.pass("failed")
		return sum, err
	}
	if !opts.Since.IsZero() {
		if err := r.cfg.CheckSince(opts.Since, sum.Start); err != nil {
			m.pass("failed")
			return sum, fmt.Errorf("reconcile: since: %w", err)
		}
	}
	// Nothing before the horizon is looked at, whatever the point: an
	// order settled before it may have expired, and applying Cobo's copy
	// would plan it again.
	floor := r.cfg.Retention.Horizon(sum.Start)
	sum.From = opts.Since
	if sum.From.IsZero() {
		sum.From = sum.Start.Add(-r.cfg.Lookback)
		if !pt.Time.IsZero() {
			sum.From = pt.Time.Add(-r.cfg.Overlap)
		}
		if sum.From.Before(floor) {
			if !pt.Time.IsZero() {
				r.cfg.Logger.Warn().Time("point", pt.Time).Time("horizon", floor).
					Msg("the reconciled point is older than the retention horizon; this pass starts at the horizon, and orders changed only between the two are not reconciled")
			}
			sum.From = floor
		}
	}
	after := ""
	for {
		if sum.Pages == r.cfg.MaxPages {
			m.pass("failed")
			return sum, fmt.Errorf("reconcile: stopped after %d pages (MaxPages) without reaching %s", sum.Pages, sum.From.Format(time.RFC3339))
		}
		list, err := r.lister.ListOrders(ctx, cobo.ListOrdersRequest{Limit: r.cfg.PageSize, After: after, Statuses: r.cfg.Statuses})
		if err != nil {
			m.pass("failed")
			m.error("list")
			return sum, fmt.Errorf("reconcile: page %d: %w", sum.Pages+1, err)
		}
		sum.Pages++
		for _, inv := range list.Invalid {
			sum.Invalid++
			m.error("invalid_order")
			r.cfg.Logger.Error().Err(inv.Err).Str("order_id", inv.OrderID).Msg("Cobo's order list holds an item that is not a usable order; skipped")
		}
		reachedPoint := false
		for _, o := range list.Orders {
			if olderThan(o, sum.From) {
				reachedPoint = true
				continue
			}
			if err := r.check(ctx, o, opts, &sum); err != nil {
				m.pass("failed")
				return sum, err
			}
		}
		next := list.Next(r.cfg.PageSize)
		if reachedPoint || list.Items() == 0 || next == "" {
			break
		}
		if next == after {
			m.pass("failed")
			return sum, fmt.Errorf("reconcile: the list cursor did not move past %q", after)
		}
		after = next
	}
	if sum.Errors > 0 {
		m.pass("failed")
		r.logSummary(sum)
		return sum, fmt.Errorf("%w: %d orders could not be checked or applied; the point stays", ErrIncomplete, sum.Errors)
	}
	if !opts.DryRun {
		if sum.PointAdvanced, err = r.advance(ctx, sum.From, sum.Start, floor); err != nil {
			m.pass("failed")
			return sum, err
		}
	}
	m.pass("completed")
	r.logSummary(sum)
	return sum, nil
}

func (r *Reconciler) logSummary(sum Summary) {
	ev := r.cfg.Logger.Debug()
	if sum.Missing > 0 || sum.Errors > 0 || sum.Invalid > 0 {
		ev = r.cfg.Logger.Info()
	}
	ev.Time("from", sum.From).Int("pages", sum.Pages).Int("checked", sum.Checked).Int("missing", sum.Missing).Int("repaired", sum.Repaired).
		Int("unresolved", sum.Unresolved).Int("errors", sum.Errors).Int("invalid", sum.Invalid).Bool("point_advanced", sum.PointAdvanced).
		Msg("reconciliation pass")
}

// check compares one of Cobo's orders with paystream's state and applies
// it when something is missing. Only an error of ctx or of opts.Report
// ends the pass; anything else is counted in sum and reported.
func (r *Reconciler) check(ctx context.Context, o cobo.OrderData, opts PassOptions, sum *Summary) error {
	m := r.cfg.Metrics
	log := r.cfg.Logger.With().Str("order_id", o.OrderID).Str("cobo_status", o.Status).Logger()
	cur, _, err := r.orders.Get(ctx, o.OrderID)
	if errors.Is(err, domain.ErrNotFound) {
		cur, err = nil, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		sum.Errors++
		m.error("read")
		log.Error().Err(err).Msg("reconcile: cannot read the order's state")
		return nil
	}
	sum.Checked++
	m.order("checked")
	gap := handlers.FindGap(cur, o)
	if gap.None() {
		return nil
	}
	sum.Missing++
	m.order("missing")
	f := Finding{OrderID: o.OrderID, CoboStatus: o.Status, Missing: gap.Reasons()}
	if cur != nil {
		f.Status = string(cur.Status)
	}
	for _, tx := range gap.Transactions {
		f.LackingTransactions = append(f.LackingTransactions, TxRef{TxID: tx.TxID, TxHash: tx.TxHash, Amount: tx.Amount.Decimal.String(), Status: tx.Status, IsLate: tx.IsLate})
	}
	if opts.DryRun {
		f.Result = ResultMissing
		return report(opts, f)
	}
	actx, cancel := context.WithTimeout(ctx, r.cfg.ApplyTimeout)
	out, err := r.apply.Reconcile(actx, o)
	cancel()
	switch {
	case err != nil && ctx.Err() != nil:
		return ctx.Err()
	case err != nil:
		f.Result, f.Error = ResultError, err.Error()
		// An answer that can never be applied would otherwise hold the
		// point back for good; it is logged for an operator instead.
		if errors.Is(err, domain.ErrInvalid) {
			sum.Invalid++
			m.error("invalid_order")
		} else {
			sum.Errors++
			m.error("apply")
		}
		log.Error().Err(err).Msg("reconcile: applying Cobo's order failed")
		return report(opts, f)
	}
	f.StatusTo, f.FirstCompleted = string(out.StatusTo), out.FirstCompleted
	for _, lp := range out.LateRecorded {
		f.LateRecorded = append(f.LateRecorded, lp.TransactionID)
	}
	for _, it := range out.Planned {
		f.Planned = append(f.Planned, it.ID)
	}
	f.Unclassified = out.Order.Unclassified
	switch left := handlers.FindGap(out.Order, o); {
	case !left.None():
		f.Result = ResultUnresolved
		sum.Unresolved++
	case out.Result == handlers.Applied:
		f.Result = ResultRepaired
		sum.Repaired++
		m.order("repaired")
		log.Info().Strs("missing", f.Missing).Str("status_to", f.StatusTo).Strs("planned", f.Planned).Msg("order repaired by reconciliation with Cobo")
	default:
		f.Result = ResultUnchanged
	}
	return report(opts, f)
}

func report(opts PassOptions, f Finding) error {
	if opts.Report == nil {
		return nil
	}
	return opts.Report(f)
}

// olderThan reports whether Cobo last changed o before t. An order without
// timestamps is never older: it is checked rather than missed.
func olderThan(o cobo.OrderData, t time.Time) bool {
	at := o.CreatedTimestamp.Time()
	if u := o.UpdatedTimestamp.Time(); u.After(at) {
		at = u
	}
	return !at.IsZero() && at.Before(t)
}

// pointAttempts bounds the compare-and-set retries of a point update;
// each conflict means another pass stored one meanwhile.
const pointAttempts = 20

// advance stores to as the point, unless the stored one is as new already
// or a pass from `from` would leave a gap behind it; ground before floor,
// the retention horizon, is no gap: no pass looks there. It reports
// whether it stored it.
func (r *Reconciler) advance(ctx context.Context, from, to, floor time.Time) (bool, error) {
	val, err := json.Marshal(Point{Time: to, UpdatedAt: r.now().UTC()})
	if err != nil {
		return false, fmt.Errorf("encode the reconciled point: %w", err)
	}
	for range pointAttempts {
		cur, rev, err := r.LoadPoint(ctx)
		if err != nil {
			return false, err
		}
		if !cur.Time.IsZero() && (!cur.Time.Before(to) || from.After(latest(cur.Time, floor))) {
			return false, nil
		}
		if rev == 0 {
			_, err = r.kv.Create(ctx, PointKey, val)
		} else {
			_, err = r.kv.Update(ctx, PointKey, val, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("store the reconciled point: %w", err)
		}
		r.notePoint(to)
		return true, nil
	}
	return false, fmt.Errorf("store the reconciled point: %d attempts lost the race: %w", pointAttempts, domain.ErrConflict)
}

func latest(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Run runs a pass every Every (jittered by up to a tenth, so that workers
// started together drift apart) until ctx is done, skipping its turn when
// another pass started less than Every/2 ago. A failed pass is logged and
// retried at the next turn. With Off it returns at once.
func (r *Reconciler) Run(ctx context.Context) error {
	if r.cfg.Off {
		return nil
	}
	for {
		wait := r.cfg.Every - r.cfg.Every/10 + rand.N(r.cfg.Every/5+1)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		r.turn(ctx)
	}
}

func (r *Reconciler) turn(ctx context.Context) {
	pt, _, err := r.LoadPoint(ctx)
	if err == nil && !pt.Time.IsZero() && r.now().Sub(pt.Time) < r.cfg.Every/2 {
		r.cfg.Metrics.pass("skipped")
		return
	}
	if _, err := r.Pass(ctx, PassOptions{}); err != nil && ctx.Err() == nil {
		r.cfg.Logger.Warn().Err(err).Msg("reconciliation pass failed; the next one starts from the same point")
	}
}
