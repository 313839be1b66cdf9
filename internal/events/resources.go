package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Streams and buckets are created, never updated. A NATS user allowed to
// update a stream can give it a republish rule, and the server then
// publishes every stored message to any subject of the account, past that
// user's subject permissions. Creating only (look up, create when missing)
// lets ingest and the workers run with $JS.API.STREAM.CREATE.<name>, which
// cannot alter a stream that exists. Changing an existing stream's
// configuration is an operator's step (deploy/nats/README.md); the
// differences are reported as drift so that nobody misses one.

// streamCreator is the part of JetStream EnsureStream needs.
type streamCreator interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
	CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
}

// EnsureStream returns the stream want.Name, creating it from want when it
// does not exist. An existing stream is never changed: drift lists how its
// configuration differs from want in the fields paystream sets, for the
// caller to report. Processes racing to create the same stream all get it.
func EnsureStream(ctx context.Context, js streamCreator, want jetstream.StreamConfig) (s jetstream.Stream, drift []string, err error) {
	s, err = lookupOrCreate(ctx,
		func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, want.Name) },
		func(ctx context.Context) (jetstream.Stream, error) { return js.CreateStream(ctx, want) },
		jetstream.ErrStreamNotFound, jetstream.ErrStreamNameAlreadyInUse)
	if err != nil {
		return nil, nil, fmt.Errorf("ensure stream %s: %w", want.Name, err)
	}
	return s, StreamDrift(want, s.CachedInfo().Config), nil
}

// bucketCreator is the part of JetStream EnsureBucket needs.
type bucketCreator interface {
	KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error)
	CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error)
}

// EnsureBucket returns the key-value bucket want.Bucket, creating it from
// want when it does not exist. An existing bucket is never changed: drift
// lists how it differs from want, as for EnsureStream.
func EnsureBucket(ctx context.Context, js bucketCreator, want jetstream.KeyValueConfig) (kv jetstream.KeyValue, drift []string, err error) {
	kv, err = lookupOrCreate(ctx,
		func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, want.Bucket) },
		func(ctx context.Context) (jetstream.KeyValue, error) { return js.CreateKeyValue(ctx, want) },
		jetstream.ErrBucketNotFound, jetstream.ErrBucketExists)
	if err != nil {
		return nil, nil, fmt.Errorf("ensure bucket %s: %w", want.Bucket, err)
	}
	// A replicated bucket just created by another process may not be
	// known yet to the server answering the status read: "stream not
	// found" then is the same kind of moment as no answer.
	st, err := retryWhile(ctx, kv.Status, func(err error) bool { return transient(err) || errors.Is(err, jetstream.ErrStreamNotFound) })
	if err != nil {
		return nil, nil, fmt.Errorf("ensure bucket %s: status: %w", want.Bucket, err)
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		drift = BucketDrift(want, bs.Config(), bs.StreamInfo().Config)
	}
	return kv, drift, nil
}

// Bounds of one resource's look-up-or-create.
const (
	ensureAttempts       = 4
	ensureAttemptTimeout = 3 * time.Second
)

// lookupOrCreate returns what get finds, or what create makes when get
// reports missing; a create that lost a race to another process (exists)
// is looked up again. Transient failures are retried (retryUnanswered).
func lookupOrCreate[T any](ctx context.Context, get, create func(context.Context) (T, error), missing, exists error) (T, error) {
	return retryUnanswered(ctx, func(ctx context.Context) (T, error) {
		v, err := get(ctx)
		if errors.Is(err, missing) {
			v, err = create(ctx)
			if errors.Is(err, exists) {
				v, err = get(ctx)
			}
		}
		return v, err
	})
}

// retryUnanswered runs attempt, each time with ensureAttemptTimeout, until
// it gets an answer other than "try again", at most ensureAttempts times.
// nats-server can leave concurrent creations of one replicated stream or
// consumer unanswered although one of them succeeded (nats-server#3677;
// seen with 2.15.2 when ingest and the workers of a new deployment start
// together), and a cluster without a meta leader answers "JetStream system
// temporarily unavailable" for a moment.
func retryUnanswered[T any](ctx context.Context, attempt func(context.Context) (T, error)) (T, error) {
	return retryWhile(ctx, attempt, transient)
}

// retryWhile is retryUnanswered with retryable deciding what is "try
// again".
func retryWhile[T any](ctx context.Context, attempt func(context.Context) (T, error), retryable func(error) bool) (T, error) {
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
		v, err := attempt(actx)
		cancel()
		if err == nil || n == ensureAttempts || ctx.Err() != nil || !retryable(err) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(time.Duration(n) * 100 * time.Millisecond):
		}
	}
}

// consumerCreator is the part of JetStream EnsureDurable needs.
type consumerCreator interface {
	CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
}

// EnsureDurable creates the durable consumer cfg.Durable on stream, or
// updates it to cfg. Unlike streams, consumers are updated in place:
// creating and updating one are the same API subject, so refusing updates
// would narrow no permission, and updating applies a changed ack wait at
// the next start. (A push consumer's deliver subject could name any
// subject, but nats-server only delivers to a subject someone subscribes
// to exactly, which the streams' wildcard subjects never are.)
func EnsureDurable(ctx context.Context, js consumerCreator, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	c, err := retryUnanswered(ctx, func(ctx context.Context) (jetstream.Consumer, error) {
		return js.CreateOrUpdateConsumer(ctx, stream, cfg)
	})
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	return c, nil
}

// jsErrClusterNotAvailable is JetStream's "system temporarily
// unavailable" (no meta leader yet); nats.go has no constant for it.
const jsErrClusterNotAvailable jetstream.ErrorCode = 10008

// transient reports whether err means a JetStream API request got no
// answer, or an answer that asks to try again, as opposed to a refusal.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jsErrClusterNotAvailable {
		return true
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders)
}

// StreamDrift lists, as "field: have X, want Y", the differences between
// an existing stream's configuration and the one paystream would create,
// in the fields paystream sets, and any republish, mirror or source on it,
// which paystream never sets.
func StreamDrift(want, have jetstream.StreamConfig) []string {
	var d drift
	d.field("Subjects", want.Subjects, have.Subjects)
	d.field("Retention", want.Retention, have.Retention)
	d.field("Storage", want.Storage, have.Storage)
	d.field("Replicas", max(want.Replicas, 1), max(have.Replicas, 1))
	d.field("MaxAge", want.MaxAge, have.MaxAge)
	if want.Duplicates != 0 {
		d.field("Duplicates", want.Duplicates, have.Duplicates)
	}
	d.field("Discard", want.Discard, have.Discard)
	if want.AllowAtomicPublish {
		d.field("AllowAtomicPublish", want.AllowAtomicPublish, have.AllowAtomicPublish)
	}
	return append(d, foreign(have)...)
}

// BucketDrift is StreamDrift for a key-value bucket: have is the bucket's
// configuration and stream the configuration of the stream behind it.
func BucketDrift(want, have jetstream.KeyValueConfig, stream jetstream.StreamConfig) []string {
	var d drift
	d.field("History", max(want.History, 1), max(have.History, 1))
	d.field("TTL", want.TTL, have.TTL)
	if want.LimitMarkerTTL != 0 || have.LimitMarkerTTL != 0 {
		// Without it the bucket has no per-key TTLs: nothing expires.
		d.field("LimitMarkerTTL", want.LimitMarkerTTL, have.LimitMarkerTTL)
	}
	d.field("Storage", want.Storage, have.Storage)
	d.field("Replicas", max(want.Replicas, 1), max(have.Replicas, 1))
	return append(d, foreign(stream)...)
}

// drift collects "field: have X, want Y" lines.
type drift []string

// field adds a line when want and have print differently (which compares
// subject lists element by element, as printed).
func (d *drift) field(name string, want, have any) {
	if fmt.Sprint(want) != fmt.Sprint(have) {
		*d = append(*d, fmt.Sprintf("%s: have %v, want %v", name, have, want))
	}
}

// foreign reports the parts of a stream's configuration that copy its
// messages elsewhere or take them from elsewhere: paystream never sets
// them, so they are an operator's addition or tampering, and say so.
func foreign(c jetstream.StreamConfig) []string {
	var d []string
	if c.RePublish != nil {
		d = append(d, fmt.Sprintf("RePublish: have %s -> %s, want none", c.RePublish.Source, c.RePublish.Destination))
	}
	if c.Mirror != nil {
		d = append(d, fmt.Sprintf("Mirror: have %s, want none", c.Mirror.Name))
	}
	if len(c.Sources) > 0 {
		d = append(d, fmt.Sprintf("Sources: have %d, want none", len(c.Sources)))
	}
	return d
}
