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

	"github.com/paystream/paystream/internal/backoff"
	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
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
	// send failed or waits is tried again (see BitGoSender.advance).
	Retry, RetryMax time.Duration
	// SendTimeout bounds what one delivery asks of BitGo (a lookup and
	// up to two sends, the client's retries included); it is also how long
	// other senders leave an item alone while its send is in flight,
	// unless the sender making it is found dead first (its heartbeat
	// OwnerTimeout stale).
	SendTimeout time.Duration
	// HeartbeatEvery is how often the sender rewrites its heartbeat in
	// OwnersBucket while it runs.
	HeartbeatEvery time.Duration
	// OwnerTimeout is how long the heartbeat of the sender whose send of
	// an item is in flight must have been stale (or gone) before another
	// sender looks the item up. At least three HeartbeatEvery.
	OwnerTimeout time.Duration
	// Retention is how long an item's persisted request is kept once BitGo
	// answered it for good (cleared or released), the workers' -retention:
	// events.DefaultRetention when zero.
	Retention time.Duration
	Logger    zerolog.Logger
	Metrics   *Metrics
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
	if c.HeartbeatEvery == 0 {
		c.HeartbeatEvery = DefaultHeartbeatEvery
	}
	if c.OwnerTimeout == 0 {
		c.OwnerTimeout = max(DefaultOwnerTimeout, 3*c.HeartbeatEvery)
	}
	if c.Retention == 0 {
		c.Retention = events.DefaultRetention
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
	case validateHeartbeats(c.HeartbeatEvery, c.OwnerTimeout) != nil:
		return validateHeartbeats(c.HeartbeatEvery, c.OwnerTimeout)
	case c.Retention < time.Second:
		return fmt.Errorf("Retention must be at least 1s, got %s", c.Retention)
	}
	return nil
}

// BitGoRecord is what paystream keeps about one BitGo item in the
// paystream_bitgo_requests bucket, always written with compare-and-set:
// the request to send, persisted before its first send, what was tried,
// and what BitGo said last. Operators read Sends and History to see what
// each sender did.
type BitGoRecord struct {
	Item domain.AllocationItem `json:"item"`
	// Request is the request to send: the first one signed, or the latest
	// one signed after a lookup found no allocation. Every request of an
	// item carries its clientExternalId and the same allocation; each has
	// its own nonce and signature.
	Request bitgo.Request `json:"request"`
	// AllocationID and Status are BitGo's, once known.
	AllocationID string `json:"allocation_id,omitempty"`
	Status       string `json:"status,omitempty"`
	Reason       string `json:"reason,omitempty"`
	// Attempts counts exchanges with BitGo: sends, polls and lookups.
	Attempts int `json:"attempts"`
	// Sends counts POSTs of the item's requests, by any sender. Each is
	// counted and persisted before it is made, so at the answer to the
	// send that made it 1, BitGo had never seen the item before.
	Sends int `json:"sends"`
	// Unclear is set and persisted before each send and cleared by a
	// definite answer. While it is set BitGo may or may not hold the
	// allocation, so the next step is a lookup by clientExternalId, never
	// a blind resend.
	Unclear bool `json:"unclear,omitempty"`
	// Refused is a definite refusal of the item's only send, waiting for
	// the lookup that confirms BitGo has nothing; the item then fails with
	// it.
	Refused string `json:"refused,omitempty"`
	// SendingUntil is when the send in flight, if any, gives up. Until
	// then another sender leaves the item alone rather than look it up
	// while the answer is on its way, unless SendingOwner is dead.
	SendingUntil time.Time `json:"sending_until"`
	// SendingOwner is the owner id (OwnersBucket) of the sender making
	// the send in flight; empty when its heartbeat was not healthy then,
	// or it predates owners (SendingUntil alone counts).
	SendingOwner string `json:"sending_owner,omitempty"`
	// History lists the requests signed for the item, oldest first; past
	// maxHistory the oldest but the first are dropped.
	History   []BitGoSigned `json:"history,omitempty"`
	LastError string        `json:"last_error,omitempty"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`
}

// BitGoSigned is one request signed for an item, as operators see it.
type BitGoSigned struct {
	// Nonce identifies the request: it is in the signed payload, and it is
	// not a secret.
	Nonce    string    `json:"nonce"`
	SignedAt time.Time `json:"signed_at"`
	// Why the request was signed: "first", or why the one before it could
	// not be sent again.
	Why string `json:"why"`
	// Sends counts its POSTs; Last is BitGo's last answer to it.
	Sends int    `json:"sends"`
	Last  string `json:"last,omitempty"`
}

// maxHistory bounds BitGoRecord.History, and so the record's size.
const maxHistory = 20

// sign appends a newly signed request to the history.
func (r *BitGoRecord) sign(req bitgo.Request, why string) {
	r.Request = req
	r.History = append(r.History, BitGoSigned{Nonce: req.Nonce(), SignedAt: time.Now().UTC(), Why: why})
	if len(r.History) > maxHistory {
		r.History = append(r.History[:1], r.History[len(r.History)-maxHistory+1:]...)
	}
}

// current is the history entry of Request.
func (r *BitGoRecord) current() *BitGoSigned {
	return &r.History[len(r.History)-1]
}

// upgrade completes a record persisted by a version without History. Such
// a version counted a send only after it, so the request may have reached
// BitGo although Attempts is 0: the record is made unclear and counted
// sent, so that it is looked up before anything else is sent and never
// failed on a refusal.
func (r *BitGoRecord) upgrade() {
	if len(r.History) > 0 {
		return
	}
	r.History = []BitGoSigned{{Nonce: r.Request.Nonce(), SignedAt: r.CreatedAt, Why: "first", Sends: r.Attempts, Last: r.LastError}}
	r.Sends = max(r.Attempts, 1)
	if r.Status == "" {
		r.Unclear = true
	}
}

// take records a definite answer from BitGo.
func (r *BitGoRecord) take(a bitgo.Allocation) {
	r.AllocationID, r.Status, r.Reason, r.LastError = a.ID, a.Status, a.Reason, ""
	r.Unclear, r.Refused = false, ""
}

// BitGoSender delivers planned BitGo items exactly once, as the order has
// them: an intent only names an item (see deliver). Each item's request
// is signed with a clientExternalId derived from the item id and
// persisted before its first send. After an unclear outcome (no answer, a
// 5xx, a refused resend, anything after which BitGo may or may not hold
// the allocation) the item is looked up by clientExternalId before
// anything is sent again: what BitGo holds is recorded, and only when it
// holds nothing is a fresh request signed (a new nonce, the same
// clientExternalId and allocation) and persisted with compare-and-set
// before its send, because BitGo may refuse a nonce it has seen. An item
// is failed only when BitGo certainly did not make its allocation. The
// intent stays unacked until the outcome is recorded on the order, so its
// redelivery is the recovery. Any number of senders may run.
type BitGoSender struct {
	js       jetstream.JetStream
	requests *events.ExpiringKV
	api      BitGoAPI
	orders   OrderRepo
	cfg      BitGoSenderConfig
	owners   *owners
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
	requests, err := events.OpenExpiringKV(ctx, js, kv, events.Retention{Keep: cfg.Retention}, cfg.Logger)
	if err != nil {
		return nil, err
	}
	own := openOwners(ctx, js, "bitgo sender", cfg.HeartbeatEvery, cfg.OwnerTimeout, cfg.Logger)
	return &BitGoSender{js: js, requests: requests, api: api, orders: orders, cfg: cfg, owners: own}, nil
}

// ClientExternalID is the BitGo idempotency key of an item: a UUID-shaped
// digest of the item id, the same in every process and every retry.
func ClientExternalID(itemID string) string {
	sum := sha256.Sum256([]byte("paystream/bitgo/" + itemID))
	return uuidString([16]byte(sum[:16]), 5)
}

// Run delivers items until ctx is done; items in flight then are handed
// back and resumed by any sender. While it runs the sender's heartbeat in
// OwnersBucket is rewritten every HeartbeatEvery, and removed when it
// returns: a send it leaves in flight is looked up by another sender at
// once, or once its heartbeat is OwnerTimeout stale if it died.
func (s *BitGoSender) Run(ctx context.Context) error {
	// Removed only after the last delivery has returned (see the batcher's
	// Run): a context of its own.
	s.owners.beat(ctx)
	hctx, stopBeats := context.WithCancel(context.WithoutCancel(ctx))
	beating := make(chan struct{})
	go func() { s.owners.run(hctx); close(beating) }()
	defer func() { stopBeats(); <-beating }()

	cons, err := s.js.Consumer(ctx, IntentStream, BitGoConsumer)
	if err != nil {
		return fmt.Errorf("bitgo consumer: %w", err)
	}
	markEvery := events.InProgressEvery(intentAckWait(cons))
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
			s.handle(ctx, msg, markEvery)
		}()
	}
	wg.Wait()
	it.Stop()
	return nil
}

// handle takes one intent as far as it can and acks it only once the
// item's final outcome is on the order, or once the intent turns out
// stale or rejected (see deliver). The intent is marked in progress every
// markEvery meanwhile.
func (s *BitGoSender) handle(ctx context.Context, msg jetstream.Msg, markEvery time.Duration) {
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
	stopMarks := events.KeepInProgress(msg, markEvery, time.Time{})
	done, err := s.deliver(ctx, msg.Subject(), it, log)
	stopMarks()
	if err != nil {
		if ctx.Err() != nil {
			_ = msg.Nak()
			return
		}
		meta, _ := msg.Metadata()
		delay := s.retryDelay(meta)
		if errors.Is(err, errSendInFlight) {
			// Looked at again soon: the sender making it may be found
			// dead well before its send would have given up.
			delay = min(delay, s.cfg.Retry)
		}
		log.Warn().Err(err).Dur("retry_in", delay).Msg("bitgo allocation not finished; it will be looked up or sent again")
		_ = msg.NakWithDelay(delay)
		return
	}
	if !done {
		_ = msg.NakWithDelay(s.cfg.Poll)
		return
	}
	_ = msg.Ack()
}

// errSendInFlight is wrapped by a delivery that found another sender's
// send of the item in flight.
var errSendInFlight = errors.New("another sender's send of the item is in flight")

// retryDelay is the wait before an intent whose delivery did not finish
// is delivered again: Retry doubling per delivery, capped at RetryMax.
func (s *BitGoSender) retryDelay(meta *jetstream.MsgMetadata) time.Duration {
	n := 1
	if meta != nil {
		n = int(min(meta.NumDelivered, 64))
	}
	return backoff.Policy{Base: s.cfg.Retry, Max: s.cfg.RetryMax}.Delay(n)
}

// deliver takes the item the intent names as far as it can. It
// reports done when nothing is left to do for the intent: the item's
// final outcome is on its order, the item cannot be sent, or the intent
// is stale or rejected; not done (and no error) while BitGo holds the
// item reserved. An error (the order or the request not readable, BitGo
// not answering) hands the intent back.
//
// What is prepared and sent is the order's copy of the item, never the
// intent's fields (see senders.go). For the BitGo sender an intent whose
// item matches its order is
//
//   - sendable when the item is planned: its request is prepared from the
//     order's copy and persisted once, or the one persisted earlier is
//     used;
//   - the sender's own in flight when the item is pending and its request
//     is persisted in paystream_bitgo_requests: the intent stays unacked
//     while BitGo holds the item, so each redelivery, here or at another
//     sender after a crash, polls it, looks it up, or sends the persisted
//     request (see advance). Two intents for one item likewise share the
//     one persisted record;
//   - stale when the item is completed or failed.
//
// A pending item without a persisted request (the bucket was lost) cannot
// be reconciled: its intent is acked with a warning. A persisted request
// whose item is not the order's is never sent: it is logged at error
// level for an operator and the intent acked.
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
		if err := s.advance(ctx, cur, rec, rev, log); err != nil {
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
	return false, fmt.Errorf("bitgo item in status %q", rec.Status)
}

// maxSendsPerDelivery bounds the sends of one delivery: a refused send is
// looked up at once and, when BitGo holds nothing, signed anew and sent
// again; anything further waits for the intent's redelivery and its
// backoff.
const maxSendsPerDelivery = 2

// findSlack widens a lookup's window to before the record was created, for
// clock skew between paystream and BitGo.
const findSlack = 24 * time.Hour

// advance takes rec as far as one delivery can and persists each step
// with compare-and-set: it polls a reserved allocation; looks up an item
// whose last send had an unclear outcome, recording what BitGo holds or
// signing a fresh request when it holds nothing; and sends the persisted
// request, at most maxSendsPerDelivery times. It returns nil once
// rec.Status is BitGo's (cleared, reserved or released), and otherwise an
// error saying why the item waits. cur is the order's copy of the item,
// from which any fresh request is signed.
func (s *BitGoSender) advance(ctx context.Context, cur domain.AllocationItem, rec *BitGoRecord, rev uint64, log zerolog.Logger) error {
	sctx, cancel := context.WithTimeout(ctx, s.cfg.SendTimeout)
	defer cancel()
	if rec.Status == bitgo.StatusReserved && rec.AllocationID != "" {
		return s.poll(ctx, sctx, rec, rev, log)
	}
	for sends := 0; ; sends++ {
		if rec.Unclear {
			if wait := time.Until(rec.SendingUntil); wait > 0 {
				if s.owners.view(ctx).state(ctx, rec.SendingOwner) != ownerDead {
					// Its answer is on the way; a lookup now could miss an
					// allocation being made and sign a request for nothing.
					return fmt.Errorf("%w for at most %s more", errSendInFlight, wait.Round(time.Millisecond))
				}
				// The sender making it died: no answer is on its way.
				// BitGo may still be making an allocation from a request
				// that left before the death, OwnerTimeout or more ago;
				// should the lookup miss it, the fresh request carries the
				// same clientExternalId, which BitGo refuses to allocate
				// twice (409), and that refusal is looked up again.
				log.Warn().Str("owner", rec.SendingOwner).Time("sending_until", rec.SendingUntil).
					Msg("the sender of the item's send in flight is gone; looking the item up now")
			}
			var err error
			if rev, err = s.reconcile(ctx, sctx, cur, rec, rev, log); err != nil || rec.Status != "" {
				return err
			}
		}
		if sends == maxSendsPerDelivery {
			return fmt.Errorf("%d sends refused in one delivery, the last: %s", sends, rec.LastError)
		}
		var again bool
		var err error
		if rev, again, err = s.send(ctx, sctx, rec, rev, log); err != nil || rec.Status != "" {
			return err
		}
		if !again {
			return errors.New(rec.LastError)
		}
	}
}

// poll reads a reserved allocation again.
func (s *BitGoSender) poll(ctx, sctx context.Context, rec *BitGoRecord, rev uint64, log zerolog.Logger) error {
	rec.Attempts++
	a, err := s.api.Get(sctx, rec.AllocationID)
	if err == nil && !knownStatus(a.Status) {
		err = fmt.Errorf("bitgo answered status %q for allocation %s", a.Status, rec.AllocationID)
	}
	if err != nil {
		rec.LastError = err.Error()
		s.noteError(err, log)
	} else {
		rec.take(a)
		s.metrics().bitgoSends.WithLabelValues(a.Status).Inc()
	}
	if _, perr := s.put(ctx, rec, rev); perr != nil {
		return errors.Join(err, perr)
	}
	return err
}

// reconcile looks the item up by clientExternalId after an unclear
// outcome. BitGo holds it: rec takes BitGo's status. It holds nothing: if
// the item's only send was certainly refused (rec.Refused), the item is
// released with that refusal; otherwise a fresh request (a new nonce, the
// same clientExternalId and allocation) is signed from cur and persisted
// with compare-and-set, so that of two senders racing one request is
// kept, and only the kept one is ever sent. A reserved allocation marked
// retriable counts as nothing held: BitGo asks for the request again, and
// the old one's nonce may be spent.
func (s *BitGoSender) reconcile(ctx, sctx context.Context, cur domain.AllocationItem, rec *BitGoRecord, rev uint64, log zerolog.Logger) (uint64, error) {
	rec.Attempts++
	ext := rec.Request.ClientExternalID
	a, found, err := s.api.Find(sctx, rec.Request.ConnectionID, ext, rec.CreatedAt.Add(-findSlack))
	if err == nil && found && !knownStatus(a.Status) {
		err = fmt.Errorf("bitgo lists allocation %s with status %q", a.ID, a.Status)
	}
	if err != nil {
		// Not knowing is not "not there": the item waits.
		rec.LastError = "look up: " + err.Error()
		s.noteError(err, log)
		rev, perr := s.put(ctx, rec, rev)
		return rev, errors.Join(fmt.Errorf("look up bitgo allocation %s: %w", ext, err), perr)
	}
	switch {
	case found && (a.Status != bitgo.StatusReserved || !a.Retriable):
		log.Info().Str("client_external_id", ext).Str("allocation_id", a.ID).Str("status", a.Status).Int("sends", rec.Sends).
			Msg("bitgo holds the item's allocation; recorded it")
		rec.take(a)
		rec.current().Last = "found " + a.Status
		s.metrics().bitgoSends.WithLabelValues(a.Status).Inc()
		return s.put(ctx, rec, rev)
	case rec.Refused != "":
		rec.Status, rec.Reason, rec.Unclear = bitgo.StatusReleased, rec.Refused, false
		return s.put(ctx, rec, rev)
	}
	why := "bitgo held nothing after: " + clipLong(rec.LastError)
	if found {
		why = "bitgo holds it reserved and retriable: " + clipLong(a.Reason)
	}
	req, err := s.api.Prepare(strings.TrimPrefix(cur.Destination, BitGoPrefix), ClientExternalID(cur.ID), cur.TokenID, cur.Amount, notes(cur))
	if err == nil && !req.SameAllocation(rec.Request) {
		err = errors.New("it would not ask for the allocation the item's first request asked for (was the currency table changed?)")
	}
	if err != nil {
		rec.LastError = "sign a fresh request: " + err.Error()
		log.Error().Err(err).Str("client_external_id", ext).
			Msg("bitgo holds no allocation for the item, but no fresh request can be signed for it; nothing sent, an operator must act")
		rev, perr := s.put(ctx, rec, rev)
		return rev, errors.Join(fmt.Errorf("sign a fresh bitgo request for %s: %w", ext, err), perr)
	}
	rec.sign(req, why)
	rec.Unclear = false
	if rev, err = s.put(ctx, rec, rev); err != nil {
		return rev, err
	}
	nonce := rec.current().Nonce
	log.Warn().Str("client_external_id", ext).Str("nonce", nonce[:min(len(nonce), 8)]).Int("sends", rec.Sends).Int("requests", len(rec.History)).
		Str("why", why).Msg("signed a fresh bitgo request for the item (new nonce, same clientExternalId)")
	return rev, nil
}

// send counts and persists one send of rec.Request, makes it, and notes
// BitGo's answer on rec. again reports a refusal to look up at once.
func (s *BitGoSender) send(ctx, sctx context.Context, rec *BitGoRecord, rev uint64, log zerolog.Logger) (uint64, bool, error) {
	rec.Attempts++
	rec.Sends++
	rec.current().Sends++
	rec.Unclear, rec.Refused = true, ""
	rec.SendingUntil, _ = sctx.Deadline()
	rec.SendingOwner = s.owners.owner()
	// Persisted before the send: from here on BitGo may hold the
	// allocation, whatever becomes of this process, and the next sender
	// must look it up first.
	rev, err := s.put(ctx, rec, rev)
	if err != nil {
		return rev, false, err
	}
	a, err := s.api.Send(sctx, rec.Request)
	rec.SendingUntil, rec.SendingOwner = time.Time{}, ""
	again := s.answer(rec, a, err, rec.Sends == 1, log)
	rev, err = s.put(ctx, rec, rev)
	return rev, again, err
}

// answer notes BitGo's answer to a send on rec and reports whether it is a
// refusal to look up at once. only says the send was the item's first.
//
// Only an answer that certainly means BitGo did not make the allocation
// may fail the item: 422 released to a request BitGo had never seen, or
// another definite 4xx to one (rec.Refused, confirmed by the lookup). A
// refusal of anything BitGo may have seen before (a resend, including
// the client's own within one Send) may be BitGo refusing a spent nonce or
// a known clientExternalId: it is looked up, never failed. 401 and 403
// are credential problems: the item waits, and is looked up and signed
// anew once they work, in case BitGo answered a spent nonce or signature
// with them.
func (s *BitGoSender) answer(rec *BitGoRecord, a bitgo.Allocation, err error, only bool, log zerolog.Logger) bool {
	if err == nil && !knownStatus(a.Status) {
		err = fmt.Errorf("bitgo answered status %q", a.Status)
	}
	var replay *bitgo.ReplayError
	first := only && !errors.As(err, &replay)
	last := &rec.current().Last
	if err != nil {
		rec.LastError, *last = err.Error(), clipLong(err.Error())
	}
	var released *bitgo.ReleasedError
	var apiErr *bitgo.APIError
	switch {
	case err == nil:
		rec.take(a)
		*last = a.Status
		s.metrics().bitgoSends.WithLabelValues(a.Status).Inc()
		return false
	case errors.As(err, &released):
		s.metrics().bitgoSends.WithLabelValues("released").Inc()
		if first {
			rec.take(bitgo.Allocation{ID: released.Allocation.ID, Status: bitgo.StatusReleased, Reason: released.Reason})
			return false
		}
		// Released in answer to a replay: the list says whether BitGo
		// holds an allocation under the clientExternalId after all.
		rec.Refused = released.Reason
		return true
	case errors.As(err, &apiErr) && (apiErr.HTTPStatus == http.StatusUnauthorized || apiErr.HTTPStatus == http.StatusForbidden):
		s.noteError(err, log)
		return false
	case errors.As(err, &apiErr) && !apiErr.Retryable():
		s.metrics().bitgoSends.WithLabelValues("refused").Inc()
		if first && certainRefusal(apiErr.HTTPStatus) {
			rec.Refused = "refused by bitgo: " + apiErr.Error()
		} else {
			log.Warn().Err(err).Int("sends", rec.Sends).
				Msg("bitgo refused a request it may have seen before (a spent nonce or a known clientExternalId); looking the allocation up")
		}
		return true
	default:
		// No answer, a 5xx, 429, a timeout: BitGo may hold the allocation.
		s.metrics().bitgoSends.WithLabelValues("error").Inc()
		return false
	}
}

// certainRefusal reports whether a 4xx status, answered to a request BitGo
// had never seen, certainly means BitGo did not make the allocation. 401
// and 403 are credentials, 408 and 429 mean "later", and 409 means BitGo
// holds something under the clientExternalId.
func certainRefusal(status int) bool {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusRequestTimeout, http.StatusConflict,
		http.StatusTooEarly, http.StatusTooManyRequests:
		return false
	}
	return status >= 400 && status < 500
}

// noteError counts an exchange that failed and says so at error level
// when BitGo refused paystream's credentials.
func (s *BitGoSender) noteError(err error, log zerolog.Logger) {
	s.metrics().bitgoSends.WithLabelValues("error").Inc()
	var apiErr *bitgo.APIError
	if errors.As(err, &apiErr) && (apiErr.HTTPStatus == http.StatusUnauthorized || apiErr.HTTPStatus == http.StatusForbidden) {
		log.Error().Err(err).Msg("bitgo refused paystream's credentials or signature; the item waits, it is never failed; check -bitgo-token-file and -bitgo-signing-key-file")
	}
}

func knownStatus(status string) bool {
	return status == bitgo.StatusCleared || status == bitgo.StatusReserved || status == bitgo.StatusReleased
}

// clipLong bounds a message kept on a record.
func clipLong(s string) string {
	const n = 300
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// stored returns the item's persisted request, or nil when there is none.
func (s *BitGoSender) stored(ctx context.Context, itemID string) (*BitGoRecord, uint64, error) {
	e, err := s.requests.KV().Get(ctx, events.Token(itemID))
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
	rec.upgrade()
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
		rec = &BitGoRecord{Item: it, CreatedAt: time.Now().UTC()}
		rec.sign(req, "first")
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
	// A request BitGo answered for good is never sent again: from then on
	// it only tells an operator what happened, and it expires after the
	// retention. One still in flight never expires.
	settled := rec.Status == bitgo.StatusCleared || rec.Status == bitgo.StatusReleased
	rev, err = s.requests.Put(ctx, events.Token(rec.Item.ID), v, rev, settled)
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
	if status == domain.AllocFailed && rec.AllocationID == "" {
		// Refused before BitGo made any allocation of it: BitGo holds nothing.
		s.metrics().cobo.itemsRefused.WithLabelValues(domain.BackendBitGo).Inc()
	}
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
