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

// Batch statuses, in order.
const (
	// BatchClaiming: created; its items are being claimed.
	BatchClaiming = "claiming"
	// BatchReady: items frozen; it may be sent, always with RequestID.
	BatchReady = "ready"
	// BatchSent: the provider has it; outcomes are being recorded.
	BatchSent = "sent"
	// BatchRejected: the provider refused it permanently; items failed.
	BatchRejected = "rejected"
)

// Batch is a Cobo batch allocation as paystream persists it before the
// first send, so that every retry sends the same request_id.
type Batch struct {
	RequestID         string                  `json:"request_id"`
	Status            string                  `json:"status"`
	Items             []domain.AllocationItem `json:"items"`
	BatchAllocationID string                  `json:"batch_allocation_id,omitempty"`
	ProviderStatus    string                  `json:"provider_status,omitempty"`
	Attempts          int                     `json:"attempts"`
	LastError         string                  `json:"last_error,omitempty"`
	CreatedAt         time.Time               `json:"created_at"`
	UpdatedAt         time.Time               `json:"updated_at"`
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
// already; it reports whether requestID owns it now.
func (s *batchStore) claim(ctx context.Context, itemID, requestID string) (bool, error) {
	key := events.Token(itemID)
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
	return string(e.Value()) == requestID, nil
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
