package allocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
)

// JetStream resources of the allocation pipeline.
const (
	// IntentStream carries planned items from the order handlers to the
	// batchers: paystream.alloc.<backend>.<order>.
	IntentStream        = "PAYSTREAM_ALLOCATIONS"
	IntentSubjectPrefix = "paystream.alloc"
	// BatcherConsumer is the durable consumer all batchers share.
	BatcherConsumer = "paystream-batcher"
	// BatchesBucket holds batches from before their first send until their
	// outcome is recorded on the orders.
	BatchesBucket = "paystream_batches"
	// ClaimsBucket maps each item id to the request it was sent under, so
	// an item joins exactly one batch.
	ClaimsBucket = "paystream_alloc_claims"
)

// EnsureResources creates the intent stream and the buckets when they do
// not exist (never changing existing ones, see events.EnsureStream), and
// creates or updates the batcher and BitGo consumers.
func EnsureResources(ctx context.Context, js jetstream.JetStream, cfg events.StreamConfig, ackWait time.Duration) error {
	cfg = cfg.WithDefaults()
	if _, err := cfg.EnsureStream(ctx, js, jetstream.StreamConfig{
		Name:        IntentStream,
		Description: "allocation items planned on orders, waiting to be batched",
		Subjects:    []string{IntentSubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      cfg.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DuplicateWindow,
	}); err != nil {
		return err
	}
	for _, c := range []struct{ name, desc, backend string }{
		{BatcherConsumer, "paystream Cobo batchers", domain.BackendCobo},
		{BitGoConsumer, "paystream BitGo senders", domain.BackendBitGo},
	} {
		// MaxDeliver is unlimited: an intent is only ever acked once its
		// outcome is durable, and dropping one would lose money movement.
		if _, err := events.EnsureDurable(ctx, js, IntentStream, jetstream.ConsumerConfig{
			Durable:       c.name,
			Description:   c.desc,
			FilterSubject: IntentSubjectPrefix + "." + c.backend + ".>",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       ackWait,
			MaxDeliver:    -1,
			MaxAckPending: 10000,
		}); err != nil {
			return err
		}
	}
	for _, b := range []struct{ name, desc string }{
		{BatchesBucket, "allocation batches not yet recorded on their orders"},
		{ClaimsBucket, "allocation item id -> request id"},
		{BitGoRequestsBucket, "BitGo item id -> prepared, signed request and its last outcome"},
		{OutboxBucket, "orders with allocation items planned, until none is left planned (the orphan sweep's worklist)"},
	} {
		if _, err := cfg.EnsureBucket(ctx, js, jetstream.KeyValueConfig{
			Bucket: b.name, Description: b.desc, Storage: jetstream.FileStorage, Replicas: cfg.Replicas, History: 1,
		}); err != nil {
			return err
		}
	}
	return nil
}

// Batch statuses. A batch goes claiming, ready, then sent; a refusal from
// Cobo takes it through checking (when Cobo may hold it all the same) to
// rejected (one item) or splitting (several).
const (
	// BatchClaiming: created; its items are being claimed.
	BatchClaiming = "claiming"
	// BatchReady: items frozen; it may be sent, always with RequestID.
	BatchReady = "ready"
	// BatchChecking: Cobo refused a send, but an earlier send of the same
	// request_id may have created the batch, or the refusal's code may
	// mean "request_id already used". It is looked up by request_id, never
	// sent again, until it is found (sent) or certainly absent (rejected
	// or splitting).
	BatchChecking = "checking"
	// BatchSent: Cobo created it; outcomes are being recorded.
	BatchSent = "sent"
	// BatchRejected: Cobo certainly did not create it and it holds one
	// item, which is recorded failed with Cobo's answer.
	BatchRejected = "rejected"
	// BatchSplitting: Cobo certainly did not create it and it holds
	// several items. They move to the two batches named in Children (the
	// first and second half), each with its own request_id, so that one
	// item Cobo refuses does not sink the others.
	BatchSplitting = "splitting"
)

// Why a batch waits (Batch.Waiting), the reason label of
// paystream_allocation_batches_waiting.
const (
	// WaitCredentials: Cobo refused paystream's credentials (401, 403, a
	// signature, nonce or key error code). The items wait; the batch is
	// sent again with its request_id until the credentials work.
	WaitCredentials = "credentials"
	// WaitEndpoint: Cobo's answer says the request went to the wrong place
	// or in the wrong form (see cobo.APIError.EndpointProblem).
	WaitEndpoint = "endpoint"
	// WaitProvider: no definite answer (5xx, 429, timeouts, lost answers,
	// failed lookups or polls).
	WaitProvider = "provider"
	// WaitSettling: a lookup found no batch, but an earlier send of the
	// request_id may still be in progress at Cobo; it is looked up again
	// once SettleAfter has passed since the last send.
	WaitSettling = "settling"
)

var waitReasons = []string{WaitCredentials, WaitEndpoint, WaitProvider, WaitSettling}

// Batch is a Cobo batch allocation as paystream persists it before the
// first send, so that every retry sends the same request_id.
type Batch struct {
	RequestID         string                  `json:"request_id"`
	Status            string                  `json:"status"`
	Items             []domain.AllocationItem `json:"items"`
	BatchAllocationID string                  `json:"batch_allocation_id,omitempty"`
	ProviderStatus    string                  `json:"provider_status,omitempty"`
	// Attempts counts the sends begun. It is persisted before each send,
	// so a batch resumed after a crash mid-send knows Cobo may hold it.
	Attempts int `json:"attempts"`
	// LastSendAt is when the latest send ended, answered or not.
	LastSendAt time.Time `json:"last_send_at,omitzero"`
	// InFlight is set, and persisted, before each send and cleared with
	// its answer: found set, the last send's fate is unknown.
	InFlight bool `json:"in_flight,omitempty"`
	// MayExist says an earlier send of this request_id got no definite
	// answer, or was begun and its answer never recorded: Cobo may hold
	// the batch, so a refusal proves nothing until a lookup settles it.
	MayExist bool `json:"may_exist,omitempty"`
	// Waiting says why the batch did not move on (Wait*); empty while it
	// moves or its items are simply not final at Cobo yet.
	Waiting string `json:"waiting,omitempty"`
	// Retries counts the tries since the batch last moved on (sends,
	// lookups, polls); NextAt, when set, is the earliest time any batcher
	// resumes it: backoff doubling from RecoverAfter to RetryMax.
	Retries int       `json:"retries,omitempty"`
	NextAt  time.Time `json:"next_at,omitzero"`
	// Rejection is Cobo's answer refusing the batch, kept while it is
	// checked and recorded as the reason of items it fails.
	Rejection string `json:"rejection,omitempty"`
	// Parent is the request_id of the batch this one was split from: the
	// items' claims move from it to this one. Children are the request_ids
	// of the halves of a splitting batch.
	Parent    string   `json:"parent,omitempty"`
	Children  []string `json:"children,omitempty"`
	LastError string   `json:"last_error,omitempty"`
	// ItemsSince is when the items first entered a batch (the first batch
	// of a split chain); stuck items are counted from it.
	ItemsSince time.Time `json:"items_since,omitzero"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

// itemsSince is ItemsSince, or CreatedAt for batches persisted before it
// existed.
func (b *Batch) itemsSince() time.Time {
	if b.ItemsSince.IsZero() {
		return b.CreatedAt
	}
	return b.ItemsSince
}

// batchStore keeps batches and claims in their buckets.
type batchStore struct {
	batches jetstream.KeyValue
	claims  jetstream.KeyValue
}

func openBatchStore(ctx context.Context, js jetstream.JetStream) (*batchStore, error) {
	b, err := js.KeyValue(ctx, BatchesBucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", BatchesBucket, err)
	}
	c, err := js.KeyValue(ctx, ClaimsBucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", ClaimsBucket, err)
	}
	return &batchStore{batches: b, claims: c}, nil
}

func (s *batchStore) get(ctx context.Context, requestID string) (*Batch, uint64, error) {
	e, err := s.batches.Get(ctx, requestID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("batch %s: %w", requestID, domain.ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get batch %s: %w", requestID, err)
	}
	var b Batch
	if err := json.Unmarshal(e.Value(), &b); err != nil {
		return nil, 0, fmt.Errorf("decode batch %s: %w", requestID, err)
	}
	return &b, e.Revision(), nil
}

// put writes b at revision rev (0 creates it).
func (s *batchStore) put(ctx context.Context, b *Batch, rev uint64) (uint64, error) {
	b.UpdatedAt = time.Now().UTC()
	v, err := json.Marshal(b)
	if err != nil {
		return 0, fmt.Errorf("encode batch %s: %w", b.RequestID, err)
	}
	if rev == 0 {
		rev, err = s.batches.Create(ctx, b.RequestID, v)
	} else {
		rev, err = s.batches.Update(ctx, b.RequestID, v, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, fmt.Errorf("put batch %s: %w", b.RequestID, domain.ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("put batch %s: %w", b.RequestID, err)
	}
	return rev, nil
}

func (s *batchStore) remove(ctx context.Context, requestID string) error {
	if err := s.batches.Delete(ctx, requestID); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete batch %s: %w", requestID, err)
	}
	return nil
}

// claim makes requestID the owner of itemID unless another request owns it
// already; it reports whether requestID owns it now. A claim held by from
// (the batch requestID was split from; empty for none) moves to requestID
// with compare-and-set, so of two batchers finishing the same split, both
// see the item moved once.
func (s *batchStore) claim(ctx context.Context, itemID, requestID, from string) (bool, error) {
	key := events.Token(itemID)
	for range 5 {
		_, err := s.claims.Create(ctx, key, []byte(requestID))
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return false, fmt.Errorf("claim item %s: %w", itemID, err)
		}
		e, err := s.claims.Get(ctx, key)
		if err != nil {
			return false, fmt.Errorf("read claim of item %s: %w", itemID, err)
		}
		switch owner := string(e.Value()); {
		case owner == requestID:
			return true, nil
		case from == "" || owner != from:
			return false, nil
		}
		_, err = s.claims.Update(ctx, key, []byte(requestID), e.Revision())
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return false, fmt.Errorf("move claim of item %s from %s to %s: %w", itemID, from, requestID, err)
		}
		// Moved meanwhile, by another batcher finishing the same split:
		// read it again.
	}
	return false, fmt.Errorf("claim item %s: %w", itemID, domain.ErrConflict)
}

func (s *batchStore) keys(ctx context.Context) ([]string, error) {
	lister, err := s.batches.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	var out []string
	for k := range lister.Keys() {
		out = append(out, k)
	}
	return out, nil
}
