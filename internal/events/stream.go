package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults for StreamConfig.
const (
	DefaultMaxAge          = 30 * 24 * time.Hour
	DefaultDuplicateWindow = 24 * time.Hour
	DefaultDLQMaxAge       = 90 * 24 * time.Hour
	DefaultReplicas        = 1
)

// StreamConfig sizes the event stream, the dead-letter stream and the
// orders bucket.
type StreamConfig struct {
	// Replicas is the replication factor: 1 embedded, 3 on a cluster.
	Replicas int
	// MaxAge is how long events are kept for replay.
	MaxAge time.Duration
	// DuplicateWindow is how long an event_id is remembered for dedup.
	// Provider retries later than this are stored again and collapse in the
	// idempotent handlers instead.
	DuplicateWindow time.Duration
	// DLQMaxAge is how long dead letters are kept.
	DLQMaxAge time.Duration
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c StreamConfig) WithDefaults() StreamConfig {
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.DuplicateWindow == 0 {
		c.DuplicateWindow = DefaultDuplicateWindow
	}
	if c.DLQMaxAge == 0 {
		c.DLQMaxAge = DefaultDLQMaxAge
	}
	return c
}

// Validate reports the first invalid field by name.
func (c StreamConfig) Validate() error {
	switch {
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("Replicas must be 1 to 5, got %d", c.Replicas)
	case c.MaxAge <= 0:
		return fmt.Errorf("MaxAge must be positive, got %s", c.MaxAge)
	case c.DuplicateWindow <= 0 || c.DuplicateWindow > c.MaxAge:
		return fmt.Errorf("DuplicateWindow must be positive and at most MaxAge, got %s", c.DuplicateWindow)
	case c.DLQMaxAge <= 0:
		return fmt.Errorf("DLQMaxAge must be positive, got %s", c.DLQMaxAge)
	}
	return nil
}

// EnsureEventStream creates or updates the event stream.
func EnsureEventStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("stream config: %w", err)
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "verified Cobo webhooks, kept by age for processing and replay",
		Subjects:    []string{SubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      cfg.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DuplicateWindow,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", StreamName, err)
	}
	return s, nil
}

// EnsureDLQStream creates or updates the dead-letter stream.
func EnsureDLQStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	cfg = cfg.WithDefaults()
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DLQStreamName,
		Description: "events paystream could not process, with the reason",
		Subjects:    []string{DLQSubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      cfg.DLQMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  10 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", DLQStreamName, err)
	}
	return s, nil
}

// EnsureOrdersBucket creates or updates the order-state bucket.
func EnsureOrdersBucket(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.KeyValue, error) {
	cfg = cfg.WithDefaults()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      OrdersBucket,
		Description: "pay-in order state, updated with compare-and-set",
		History:     5,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure bucket %s: %w", OrdersBucket, err)
	}
	return kv, nil
}

// OpenOrdersBucket binds to the orders bucket, creating it when it does not
// exist yet.
func OpenOrdersBucket(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, OrdersBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return EnsureOrdersBucket(ctx, js, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", OrdersBucket, err)
	}
	return kv, nil
}
