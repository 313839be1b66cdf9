package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Defaults for Retention.
const (
	// DefaultRetention is how long settled state is kept after its last
	// change (the workers' -retention).
	DefaultRetention = 90 * 24 * time.Hour
	// DefaultRetentionMargin is what the retention horizon leaves for
	// clocks that disagree (paystream's, the NATS servers', Cobo's).
	DefaultRetentionMargin = 24 * time.Hour
	// DefaultMarkerTTL is how long a bucket keeps the marker the server
	// leaves where a key expired (the bucket's LimitMarkerTTL); never more
	// than the retention.
	DefaultMarkerTTL = time.Hour
)

// ErrRetentionTooShort means the retention is not longer than the event
// stream keeps events.
var ErrRetentionTooShort = errors.New("retention is not longer than the event stream's max age")

// Retention bounds paystream's state. What is settled (a final order
// whose allocation items are all final, a retired batch's claims, a BitGo
// request BitGo answered for good, a removed outbox mark) expires Keep
// after its last change, through JetStream per-key TTLs; nothing in
// progress ever expires. What happened before the horizon (Horizon) is
// never allocated again, so that expired state cannot be planned twice.
type Retention struct {
	// Keep is how long settled state lives after its last change. It must
	// be longer than the event stream's max age (CheckRetention), so that
	// no stored event outlives the state it changed.
	Keep time.Duration
	// Margin is how much earlier than Keep ago the horizon lies, for
	// clocks that disagree.
	Margin time.Duration
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (r Retention) WithDefaults() Retention {
	if r.Keep == 0 {
		r.Keep = DefaultRetention
	}
	if r.Margin == 0 {
		r.Margin = min(DefaultRetentionMargin, r.Keep/2)
	}
	return r
}

// Validate reports the first invalid field by name.
func (r Retention) Validate() error {
	switch {
	case r.Keep < time.Second:
		return fmt.Errorf("Keep must be at least 1s (JetStream TTLs count whole seconds), got %s", r.Keep)
	case r.Margin <= 0 || r.Margin >= r.Keep:
		return fmt.Errorf("Margin must be positive and below Keep (%s), got %s", r.Keep, r.Margin)
	}
	return nil
}

// Horizon is the oldest time whose state paystream still answers for at
// now: Keep minus Margin ago. State changed for the last time before it
// may have expired; reconciliation looks no further back.
func (r Retention) Horizon(now time.Time) time.Time {
	return now.Add(-(r.Keep - r.Margin))
}

// MarkerTTL is the LimitMarkerTTL paystream creates its buckets with:
// DefaultMarkerTTL, at most Keep (a per-key TTL shorter than the marker's
// is raised to it in buckets with history).
func (r Retention) MarkerTTL() time.Duration {
	return max(time.Second, min(DefaultMarkerTTL, r.Keep))
}

// streamLooker is the part of JetStream CheckRetention needs.
type streamLooker interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
}

// CheckRetention refuses r, with an error wrapping ErrRetentionTooShort,
// when Keep is not longer than the max age of the event stream as it is
// now (a stream keeping events for ever included): a settled order must
// outlive every event that changed it, so that no redelivery or replay
// finds its events without its state.
func CheckRetention(ctx context.Context, js streamLooker, r Retention) error {
	s, err := js.Stream(ctx, StreamName)
	if err != nil {
		return fmt.Errorf("look up the event stream %s for its max age: %w", StreamName, err)
	}
	maxAge := s.CachedInfo().Config.MaxAge
	if maxAge <= 0 || r.Keep <= maxAge {
		have := maxAge.String()
		if maxAge <= 0 {
			have = "unlimited"
		}
		return fmt.Errorf("%w: -retention %s, event stream %s max age %s", ErrRetentionTooShort, r.Keep, StreamName, have)
	}
	return nil
}

// ExpiringKV writes a key-value bucket whose settled keys expire: a write
// marked settled carries a per-key TTL of the retention's Keep, so the
// key lives at least Keep after its last settled write; any other write
// carries none, so a key in progress never expires. It needs per-key TTLs
// on the bucket (LimitMarkerTTL, nats-server 2.11 or later); a bucket
// created before paystream set them keeps every key for ever until an
// operator enables them (deploy/nats/README.md), and is written as
// before meanwhile.
type ExpiringKV struct {
	kv jetstream.KeyValue
	js jetstream.Publisher
	// subject is the bucket's key prefix, "$KV.<bucket>.".
	subject string
	// ttl is the per-key TTL of settled writes; 0 when the bucket has no
	// per-key TTLs.
	ttl time.Duration
	// created is when the bucket's stream was created: no key can have
	// expired before Keep after it.
	created time.Time
}

// OpenExpiringKV reads kv's configuration and returns its writer. When
// the bucket has no per-key TTLs it says so at error level on log, naming
// the upgrade step; its keys then never expire.
func OpenExpiringKV(ctx context.Context, js jetstream.Publisher, kv jetstream.KeyValue, r Retention, log zerolog.Logger) (*ExpiringKV, error) {
	r = r.WithDefaults()
	st, err := retryWhile(ctx, kv.Status, func(err error) bool { return transient(err) || errors.Is(err, jetstream.ErrStreamNotFound) })
	if err != nil {
		return nil, fmt.Errorf("bucket %s: status: %w", kv.Bucket(), err)
	}
	e := &ExpiringKV{kv: kv, js: js, subject: "$KV." + kv.Bucket() + "."}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		e.created = bs.StreamInfo().Created
	}
	if st.LimitMarkerTTL() > 0 {
		e.ttl = r.Keep
	} else {
		log.Error().Str("bucket", kv.Bucket()).Dur("retention", r.Keep).
			Msg(fmt.Sprintf("bucket has no per-key TTLs: its settled keys are kept for ever until an operator enables them (nats kv edit %s --marker-ttl %s, deploy/nats/README.md) and the workers restart",
				kv.Bucket(), r.MarkerTTL()))
	}
	return e, nil
}

// KV returns the bucket, for reads.
func (e *ExpiringKV) KV() jetstream.KeyValue { return e.kv }

// TTL is the per-key TTL of settled writes; 0 when nothing expires.
func (e *ExpiringKV) TTL() time.Duration { return e.ttl }

// Created is when the bucket was created (zero when unknown).
func (e *ExpiringKV) Created() time.Time { return e.created }

// Put writes val under key at revision rev with compare-and-set (0: the
// key must not exist, or be deleted). A lost race wraps
// jetstream.ErrKeyExists (rev 0) or jetstream.ErrKeyRevisionMismatch, as
// KeyValue's Create and Update do. A settled write carries the TTL and
// rolls up the key's earlier revisions, which may carry none: when it
// expires, nothing older is left to reappear.
func (e *ExpiringKV) Put(ctx context.Context, key string, val []byte, rev uint64, settled bool) (uint64, error) {
	ttl := e.ttl
	if !settled {
		ttl = 0
	}
	if rev == 0 {
		if ttl > 0 {
			// Create also replaces a deleted key or the marker of an
			// expired one; there is no older value to roll up.
			return e.kv.Create(ctx, key, val, jetstream.KeyTTL(ttl))
		}
		return e.kv.Create(ctx, key, val)
	}
	if ttl == 0 {
		return e.kv.Update(ctx, key, val, rev)
	}
	m := nats.NewMsg(e.subject + key)
	m.Data = val
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	ack, err := e.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(ttl))
	if wrongLastSequence(err) {
		return 0, fmt.Errorf("%w: %w", err, jetstream.ErrKeyRevisionMismatch)
	}
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// CreateNew writes val under key, in one round trip, only if the key has
// no entry at all: unlike Put at revision 0 it does not replace the
// marker of a deleted or expired key, which costs a read whenever the key
// exists. Any entry, or a lost race, wraps jetstream.ErrKeyExists. It is
// for a writer that only guesses that the key is new; a settled write
// carries the TTL, as with Put.
func (e *ExpiringKV) CreateNew(ctx context.Context, key string, val []byte, settled bool) (uint64, error) {
	if e.ttl == 0 || !settled {
		rev, err := e.kv.Update(ctx, key, val, 0)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return 0, fmt.Errorf("%w: %w", err, jetstream.ErrKeyExists)
		}
		return rev, err
	}
	m := nats.NewMsg(e.subject + key)
	m.Data = val
	ack, err := e.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(0), jetstream.WithMsgTTL(e.ttl))
	if wrongLastSequence(err) {
		return 0, fmt.Errorf("%w: %w", err, jetstream.ErrKeyExists)
	}
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// Remove removes key, if its revision is still rev when rev is not 0.
// The marker it leaves expires after the TTL when the bucket has per-key
// TTLs; otherwise it is a delete marker kept for ever, as KeyValue's
// Delete leaves. A lost race wraps jetstream.ErrKeyRevisionMismatch.
func (e *ExpiringKV) Remove(ctx context.Context, key string, rev uint64) error {
	var opts []jetstream.KVDeleteOpt
	if rev != 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	if e.ttl == 0 {
		return e.kv.Delete(ctx, key, opts...)
	}
	return e.kv.Purge(ctx, key, append(opts, jetstream.PurgeTTL(e.ttl))...)
}

// wrongLastSequence reports a compare-and-set that lost: another writer
// changed the key first (10071, or 10164 on replicated streams).
func wrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
