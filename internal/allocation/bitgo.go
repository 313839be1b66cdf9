package allocation

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"

	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
)

// JetStream resources of the BitGo sender.
const (
	// BitGoConsumer is the durable consumer all BitGo senders share; it
	// reads paystream.alloc.bitgo.>.
	BitGoConsumer = "paystream-bitgo"
	// BitGoRequestsBucket keeps each item's prepared, signed request from
	// before its first send, so every resend carries the identical body.
	BitGoRequestsBucket = "paystream_bitgo_requests"
)

// BitGoAPI is the part of the BitGo client the sender uses.
type BitGoAPI interface {
	Prepare(connectionID, clientExternalID, tokenID string, amount decimal.Decimal, notes string) (bitgo.Request, error)
	Send(ctx context.Context, r bitgo.Request) (bitgo.Allocation, error)
	Get(ctx context.Context, allocationID string) (bitgo.Allocation, error)
	Find(ctx context.Context, connectionID, clientExternalID string, since time.Time) (bitgo.Allocation, bool, error)
}

// Defaults for BitGoSenderConfig.
const (
	DefaultBitGoConcurrency = 4
	DefaultBitGoPoll        = 5 * time.Second
	DefaultBitGoRetry       = 2 * time.Second
	DefaultBitGoRetryMax    = time.Minute
)

// BitGoSenderConfig configures a BitGoSender.
type BitGoSenderConfig struct {
	// Concurrency is how many items are in flight at once.
	Concurrency int
	// Poll is how often a reserved allocation is read again.
	Poll time.Duration
	// Retry and RetryMax bound the doubling delay before an item whose
	// send failed is tried again (with the identical body).
	Retry, RetryMax time.Duration
	// SendTimeout bounds one send, the client's retries included.
	SendTimeout time.Duration
	Logger      zerolog.Logger
	Metrics     *Metrics
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c BitGoSenderConfig) WithDefaults() BitGoSenderConfig {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultBitGoConcurrency
	}
	if c.Poll == 0 {
		c.Poll = DefaultBitGoPoll
	}
	if c.Retry == 0 {
		c.Retry = DefaultBitGoRetry
	}
	if c.RetryMax == 0 {
		c.RetryMax = DefaultBitGoRetryMax
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = 45 * time.Second
	}
	return c
}

// Validate reports the first invalid field by name.
func (c BitGoSenderConfig) Validate() error {
	switch {
	case c.Concurrency < 1 || c.Concurrency > 256:
		return fmt.Errorf("Concurrency must be 1 to 256, got %d", c.Concurrency)
	case c.Poll <= 0:
		return fmt.Errorf("Poll must be positive, got %s", c.Poll)
	case c.Retry <= 0 || c.RetryMax < c.Retry:
		return fmt.Errorf("Retry must be positive and at most RetryMax, got %s and %s", c.Retry, c.RetryMax)
	case c.SendTimeout <= 0:
		return fmt.Errorf("SendTimeout must be positive, got %s", c.SendTimeout)
	}
	return nil
}

// BitGoRecord is what paystream keeps about one BitGo item: the signed
// request, prepared once and persisted before the first send, and what
// BitGo said last.
type BitGoRecord struct {
	Item    domain.AllocationItem `json:"item"`
	Request bitgo.Request         `json:"request"`
	// AllocationID and Status are BitGo's, once known.
	AllocationID string    `json:"allocation_id,omitempty"`
	Status       string    `json:"status,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	Attempts     int       `json:"attempts"`
	LastError    string    `json:"last_error,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// BitGoSender delivers planned BitGo items exactly once, as the order has
// them: an intent only names an item (see deliver). Each item is
// prepared and signed once, with a clientExternalId derived from the item
// id, and persisted before its first send; every resend, also by another
// replica after a crash, sends those identical bytes. The intent stays
// unacked until the outcome is recorded on the order, so its redelivery
// is the recovery. Any number of senders may run.
type BitGoSender struct {
	js       jetstream.JetStream
	requests jetstream.KeyValue
	api      BitGoAPI
	orders   OrderRepo
	cfg      BitGoSenderConfig
}

// NewBitGoSender returns a BitGoSender. EnsureResources must have run.
func NewBitGoSender(ctx context.Context, js jetstream.JetStream, api BitGoAPI, orders OrderRepo, cfg BitGoSenderConfig) (*BitGoSender, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bitgo sender config: %w", err)
	}
	kv, err := js.KeyValue(ctx, BitGoRequestsBucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", BitGoRequestsBucket, err)
	}
	return &BitGoSender{js: js, requests: kv, api: api, orders: orders, cfg: cfg}, nil
}

// ClientExternalID is the BitGo idempotency key of an item: a UUID-shaped
// digest of the item id, the same in every process and every retry.
func ClientExternalID(itemID string) string {
	sum := sha256.Sum256([]byte("paystream/bitgo/" + itemID))
	return uuidString([16]byte(sum[:16]), 5)
}

// Run delivers items until ctx is done; items in flight then are handed
// back and resumed by any sender.
func (s *BitGoSender) Run(ctx context.Context) error {
	cons, err := s.js.Consumer(ctx, IntentStream, BitGoConsumer)
	if err != nil {
		return fmt.Errorf("bitgo consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2*s.cfg.Concurrency), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return fmt.Errorf("bitgo consume: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	var wg sync.WaitGroup
	sem := make(chan struct{}, s.cfg.Concurrency)
loop:
	for ctx.Err() == nil {
		msg, err := it.Next(jetstream.NextMaxWait(500 * time.Millisecond))
		switch {
		case err == nil:
		case errors.Is(err, nats.ErrTimeout):
			continue
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			break loop
		default:
			s.cfg.Logger.Warn().Err(err).Msg("bitgo sender pull interrupted")
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			s.handle(ctx, msg)
		}()
	}
	wg.Wait()
	it.Stop()
	return nil
}

// handle takes one intent as far as it can and acks it only once the
// item's final outcome is on the order, or once the intent turns out
// stale or rejected (see deliver).
func (s *BitGoSender) handle(ctx context.Context, msg jetstream.Msg) {
	var it domain.AllocationItem
	if err := json.Unmarshal(msg.Data(), &it); err != nil || it.ID == "" {
		detail := "no item id"
		if err != nil {
			detail = err.Error()
		}
		rejectIntent(s.cfg.Logger, s.metrics(), domain.BackendBitGo, msg.Subject(), it, &rejection{RejectUndecodable, clip(detail)})
		_ = msg.Term()
		return
	}
	if rej := checkSubject(domain.BackendBitGo, msg.Subject(), it); rej != nil {
		rejectIntent(s.cfg.Logger, s.metrics(), domain.BackendBitGo, msg.Subject(), it, rej)
		_ = msg.Ack()
		return
	}
	log := s.cfg.Logger.With().Str("order_id", it.OrderID).Str("item_id", it.ID).Logger()
	// Keep the intent ours while BitGo answers slowly, so that another
	// sender does not pick it up meanwhile; a crash still frees it within
	// one ack wait.
	stopBeat := heartbeat(msg)
	done, err := s.deliver(ctx, msg.Subject(), it, log)
	stopBeat()
	if err != nil {
		if ctx.Err() != nil {
			_ = msg.Nak()
			return
		}
		meta, _ := msg.Metadata()
		delay := s.retryDelay(meta)
		log.Warn().Err(err).Dur("retry_in", delay).Msg("bitgo allocation not finished; it will be resent with the identical body")
		_ = msg.NakWithDelay(delay)
		return
	}
	if !done {
		_ = msg.NakWithDelay(s.cfg.Poll)
		return
	}
	_ = msg.Ack()
}

// heartbeat marks msg in progress every second until stopped.
func heartbeat(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func (s *BitGoSender) retryDelay(meta *jetstream.MsgMetadata) time.Duration {
	d := s.cfg.Retry
	if meta != nil {
		for i := uint64(1); i < meta.NumDelivered && d < s.cfg.RetryMax; i++ {
			d *= 2
		}
	}
	return min(d, s.cfg.RetryMax)
}

// deliver takes the item the intent names as far as it can. It
// reports done when nothing is left to do for the intent: the item's
// final outcome is on its order, the item cannot be sent, or the intent
// is stale or rejected; not done (and no error) while BitGo holds the
// item reserved. An error (the order or the request not readable, BitGo
// not answering) hands the intent back.
//
// What is prepared and sent is the order's copy of the item, never the
// intent's fields (see intents.go). For the BitGo sender an intent whose
// item matches its order is
//
//   - sendable when the item is planned: its request is prepared from the
//     order's copy and persisted once, or the one persisted earlier is
//     used;
//   - the sender's own in flight when the item is pending and its request
//     is persisted in paystream_bitgo_requests: the intent stays unacked
//     while BitGo holds the item, so each redelivery, here or at another
//     sender after a crash, polls or resends those identical bytes. Two
//     intents for one item likewise share the one persisted request;
//   - stale when the item is completed or failed.
//
// A pending item without a persisted request (the bucket was lost) cannot
// be resent identically: its intent is acked with a warning. A persisted
// request whose item is not the order's is never sent: it is logged at
// error level for an operator and the intent acked.
func (s *BitGoSender) deliver(ctx context.Context, subject string, it domain.AllocationItem, log zerolog.Logger) (bool, error) {
	o, _, err := s.orders.Get(ctx, it.OrderID)
	switch {
	case errors.Is(err, domain.ErrNotFound):
		o = nil
	case err != nil:
		return false, fmt.Errorf("load order %s: %w", it.OrderID, err)
	}
	cur, rej := matchOrder(it, o)
	if rej != nil {
		rejectIntent(s.cfg.Logger, s.metrics(), domain.BackendBitGo, subject, it, rej)
		return true, nil
	}
	if cur.Final() {
		// An earlier delivery recorded the outcome and its ack was lost.
		staleIntent(log, cur, cur.Status, "its outcome is recorded")
		return true, nil
	}
	rec, rev, err := s.stored(ctx, cur.ID)
	if err != nil {
		return false, err
	}
	if rec == nil {
		if cur.Status != domain.AllocPlanned {
			log.Warn().Str("status", cur.Status).Str("allocation_id", cur.ProviderID).
				Msg("bitgo item in flight without a persisted request; nothing resent, an operator must reconcile it with BitGo")
			return true, nil
		}
		if rec, rev, err = s.load(ctx, cur); err != nil {
			return false, err
		}
		if rec == nil {
			// The item cannot be expressed as a BitGo request (unknown
			// token, too many decimals): nothing was sent, an operator
			// must act.
			return true, nil
		}
	}
	if d := itemDiff("request", rec.Item, cur); d != "" {
		// Only a request persisted before intents were checked against
		// their orders can differ; it may have reached BitGo already.
		log.Error().Str("differs", d).Str("client_external_id", rec.Request.ClientExternalID).
			Msg("the persisted bitgo request is not the order's item; not sent, an operator must review it")
		return true, nil
	}
	if rec.Status != bitgo.StatusCleared && rec.Status != bitgo.StatusReleased {
		s.exchange(ctx, rec, log)
		if rev, err = s.put(ctx, rec, rev); err != nil {
			return false, err
		}
	}
	switch rec.Status {
	case bitgo.StatusCleared:
		return true, s.recordOutcome(ctx, rec, domain.AllocCompleted, "", log)
	case bitgo.StatusReleased:
		return true, s.recordOutcome(ctx, rec, domain.AllocFailed, "bitgo released the allocation: "+rec.Reason, log)
	case bitgo.StatusReserved:
		return false, s.recordOutcome(ctx, rec, domain.AllocPending, "", log)
	}
	return false, errors.New(rec.LastError)
}

// exchange asks BitGo once (with the client's own retries) and notes the
// answer on rec.
func (s *BitGoSender) exchange(ctx context.Context, rec *BitGoRecord, log zerolog.Logger) {
	sctx, cancel := context.WithTimeout(ctx, s.cfg.SendTimeout)
	defer cancel()
	rec.Attempts++
	var a bitgo.Allocation
	var err error
	op := "send"
	if rec.Status == bitgo.StatusReserved && rec.AllocationID != "" {
		op = "get"
		a, err = s.api.Get(sctx, rec.AllocationID)
	} else {
		a, err = s.api.Send(sctx, rec.Request)
	}
	var apiErr *bitgo.APIError
	if errors.As(err, &apiErr) && !apiErr.Retryable() && op == "send" &&
		apiErr.HTTPStatus != http.StatusUnauthorized && apiErr.HTTPStatus != http.StatusForbidden {
		// A refused send may be BitGo refusing a replay of an allocation it
		// already recorded (undocumented): look for it before concluding.
		found, ok, ferr := s.api.Find(sctx, rec.Request.ConnectionID, rec.Request.ClientExternalID, rec.CreatedAt.Add(-24*time.Hour))
		switch {
		case ferr != nil:
			err = fmt.Errorf("%w; reconciling: %w", err, ferr)
		case ok:
			log.Info().Str("allocation_id", found.ID).Str("status", found.Status).Msg("bitgo refused the replay; found the recorded allocation")
			a, err = found, nil
		default:
			rec.Status, rec.Reason, rec.LastError = bitgo.StatusReleased, "refused by bitgo: "+apiErr.Error(), apiErr.Error()
			s.metrics().bitgoSends.WithLabelValues("refused").Inc()
			return
		}
	}
	var released *bitgo.ReleasedError
	switch {
	case errors.As(err, &released):
		rec.AllocationID, rec.Status, rec.Reason = released.Allocation.ID, bitgo.StatusReleased, released.Reason
		s.metrics().bitgoSends.WithLabelValues("released").Inc()
	case err != nil:
		rec.LastError = err.Error()
		s.metrics().bitgoSends.WithLabelValues("error").Inc()
		if errors.As(err, &apiErr) && (apiErr.HTTPStatus == http.StatusUnauthorized || apiErr.HTTPStatus == http.StatusForbidden) {
			log.Error().Err(err).Msg("bitgo refused paystream's credentials; check -bitgo-token-file and -bitgo-signing-key-file")
		}
	case a.Status == bitgo.StatusCleared || a.Status == bitgo.StatusReserved || a.Status == bitgo.StatusReleased:
		rec.AllocationID, rec.Status, rec.Reason, rec.LastError = a.ID, a.Status, a.Reason, ""
		s.metrics().bitgoSends.WithLabelValues(a.Status).Inc()
	default:
		rec.LastError = fmt.Sprintf("bitgo answered status %q", a.Status)
		s.metrics().bitgoSends.WithLabelValues("error").Inc()
	}
}

// stored returns the item's persisted request, or nil when there is none.
func (s *BitGoSender) stored(ctx context.Context, itemID string) (*BitGoRecord, uint64, error) {
	e, err := s.requests.Get(ctx, events.Token(itemID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get bitgo request of item %s: %w", itemID, err)
	}
	var rec BitGoRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, 0, fmt.Errorf("decode bitgo request of item %s: %w", itemID, err)
	}
	return &rec, e.Revision(), nil
}

// load returns the item's persisted request, preparing it from it, which
// must be the order's copy, and persisting it first if there is none. It
// returns nil when the item cannot be prepared; the item is then recorded
// failed on the order.
func (s *BitGoSender) load(ctx context.Context, it domain.AllocationItem) (*BitGoRecord, uint64, error) {
	for range 3 {
		rec, rev, err := s.stored(ctx, it.ID)
		if err != nil || rec != nil {
			return rec, rev, err
		}
		req, perr := s.api.Prepare(strings.TrimPrefix(it.Destination, BitGoPrefix), ClientExternalID(it.ID), it.TokenID, it.Amount, notes(it))
		if perr != nil {
			rec := &BitGoRecord{Item: it}
			return nil, 0, s.recordOutcome(ctx, rec, domain.AllocFailed, perr.Error(), s.cfg.Logger.With().Str("order_id", it.OrderID).Str("item_id", it.ID).Logger())
		}
		rec = &BitGoRecord{Item: it, Request: req, CreatedAt: time.Now().UTC()}
		rev, err = s.put(ctx, rec, 0)
		if errors.Is(err, domain.ErrConflict) {
			// Another sender prepared it first: use its bytes, not ours.
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		return rec, rev, nil
	}
	return nil, 0, fmt.Errorf("prepare bitgo request of item %s: %w", it.ID, domain.ErrConflict)
}

func (s *BitGoSender) put(ctx context.Context, rec *BitGoRecord, rev uint64) (uint64, error) {
	rec.UpdatedAt = time.Now().UTC()
	v, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("encode bitgo request of item %s: %w", rec.Item.ID, err)
	}
	key := events.Token(rec.Item.ID)
	if rev == 0 {
		rev, err = s.requests.Create(ctx, key, v)
	} else {
		rev, err = s.requests.Update(ctx, key, v, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, fmt.Errorf("put bitgo request of item %s: %w", rec.Item.ID, domain.ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("put bitgo request of item %s: %w", rec.Item.ID, err)
	}
	return rev, nil
}

// recordOutcome writes the item's status on its order with compare-and-set.
func (s *BitGoSender) recordOutcome(ctx context.Context, rec *BitGoRecord, status, reason string, log zerolog.Logger) error {
	it := rec.Item
	changed, err := updateItems(ctx, s.orders, it.OrderID, func(cur *domain.AllocationItem) bool {
		if cur.ID != it.ID || (cur.Status == status && cur.ProviderID == rec.AllocationID) {
			return false
		}
		cur.Status, cur.Reason = status, reason
		cur.RequestID = rec.Request.ClientExternalID
		cur.ProviderID = rec.AllocationID
		cur.ProviderStatus = rec.Status
		return true
	})
	if err != nil {
		return err
	}
	if len(changed) == 0 {
		return nil
	}
	s.metrics().items.WithLabelValues(domain.BackendBitGo, status).Inc()
	ev := log.Info()
	if status == domain.AllocFailed {
		ev = log.Error()
	}
	ev.Str("client_external_id", rec.Request.ClientExternalID).Str("allocation_id", rec.AllocationID).
		Str("amount", it.Amount.String()).Str("token_id", it.TokenID).Str("destination", it.Destination).
		Str("status", status).Str("reason", reason).Msg("allocation item recorded")
	return nil
}

// notes is the item's description made safe for BitGo's signed payload,
// which must stay printable ASCII to be signed as BitGoJS would.
func notes(it domain.AllocationItem) string {
	b := []byte(it.Description)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b[:min(len(b), 1024)])
}

func (s *BitGoSender) metrics() *Metrics {
	if s.cfg.Metrics == nil {
		return nopMetrics
	}
	return s.cfg.Metrics
}
