package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Defaults for StreamConfig.
const (
	DefaultMaxAge          = 30 * 24 * time.Hour
	DefaultDuplicateWindow = 24 * time.Hour
	DefaultDLQMaxAge       = 90 * 24 * time.Hour
	DefaultReplicas        = 1
)

// StreamConfig sizes the event stream, the dead-letter stream and the
// buckets.
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
	// Retention is how long settled state is kept in the buckets (the
	// workers' -retention); buckets are created with per-key TTLs for it.
	Retention Retention
	// Logger gets a warning for each existing stream or bucket whose
	// configuration differs from these settings (see EnsureStream).
	Logger zerolog.Logger
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
	c.Retention = c.Retention.WithDefaults()
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
	if err := c.Retention.Validate(); err != nil {
		return fmt.Errorf("Retention.%w", err)
	}
	return nil
}

// EnsureEventStream returns the event stream, creating it when it does not
// exist; it never changes an existing one (see EnsureStream).
func EnsureEventStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("stream config: %w", err)
	}
	return cfg.EnsureStream(ctx, js, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "verified Cobo webhooks, kept by age for processing and replay",
		Subjects:    []string{SubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      cfg.MaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DuplicateWindow,
		Discard:     jetstream.DiscardOld,
		// Ingest stores the webhooks in flight as one atomic batch, one
		// disk sync for many (GroupCommitter). Only settable at creation.
		AllowAtomicPublish: true,
	})
}

// EnsureDLQStream returns the dead-letter stream, creating it when it does
// not exist; it never changes an existing one (see EnsureStream).
func EnsureDLQStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	cfg = cfg.WithDefaults()
	return cfg.EnsureStream(ctx, js, jetstream.StreamConfig{
		Name:        DLQStreamName,
		Description: "events paystream could not process, with the reason",
		Subjects:    []string{DLQSubjectPrefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      cfg.DLQMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  10 * time.Minute,
	})
}

// EnsureOrdersBucket returns the order-state bucket, creating it when it
// does not exist, with per-key TTLs so that settled orders expire (see
// OpenOrderStore); it never changes an existing one (see EnsureBucket).
func EnsureOrdersBucket(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.KeyValue, error) {
	cfg = cfg.WithDefaults()
	return cfg.EnsureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket:         OrdersBucket,
		Description:    "pay-in order state, updated with compare-and-set",
		History:        5,
		Storage:        jetstream.FileStorage,
		Replicas:       cfg.Replicas,
		LimitMarkerTTL: cfg.Retention.MarkerTTL(),
	})
}

// EnsureStream is the package function EnsureStream, plus a warning on
// c.Logger when the existing stream differs from want.
func (c StreamConfig) EnsureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) (jetstream.Stream, error) {
	s, drift, err := EnsureStream(ctx, js, want)
	if err != nil {
		return nil, err
	}
	c.warnDrift("stream", want.Name, drift)
	return s, nil
}

// EnsureBucket is the package function EnsureBucket, plus a warning on
// c.Logger when the existing bucket differs from want. A server too old
// for per-key TTLs (before 2.11) gets the bucket without them, said at
// error level: its keys never expire.
func (c StreamConfig) EnsureBucket(ctx context.Context, js jetstream.JetStream, want jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, drift, err := EnsureBucket(ctx, js, want)
	if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
		c.Logger.Error().Str("bucket", want.Bucket).
			Msg("the NATS server has no per-key TTLs (nats-server 2.11 or later has them): bucket created without them, its keys are kept for ever")
		want.LimitMarkerTTL = 0
		kv, drift, err = EnsureBucket(ctx, js, want)
	}
	if err != nil {
		return nil, err
	}
	c.warnDrift("bucket", want.Bucket, drift)
	return kv, nil
}

func (c StreamConfig) warnDrift(kind, name string, drift []string) {
	if len(drift) == 0 {
		return
	}
	// Warn, not fail: the existing configuration is what runs, and an
	// operator may have changed it on purpose (more replicas, a longer
	// MaxAge); a republish nobody set is worth a look either way.
	c.Logger.Warn().Str(kind, name).Strs("drift", drift).
		Msg("existing configuration differs from this process's settings and is kept; change it as an operator (deploy/nats/README.md)")
}
