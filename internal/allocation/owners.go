package allocation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// OwnersBucket holds the heartbeats of the running batchers and BitGo
// senders: one key per owner id (a process's component, new at every
// start), rewritten every HeartbeatEvery. Batches and BitGo sends in
// flight name their owner; other processes leave them alone while the
// owner's heartbeat is fresh, and take them over once it is stale for
// OwnerTimeout or removed (a clean stop removes it).
const OwnersBucket = "paystream_alloc_owners"

// ownersMaxAge is the bucket's MaxAge: the key of an owner that stopped
// beating is dropped after it. Staleness is judged well before (see
// liveness); this only keeps dead owners from piling up.
const ownersMaxAge = time.Hour

// Defaults of the heartbeats (BatcherConfig, BitGoSenderConfig).
const (
	// DefaultHeartbeatEvery is how often an owner rewrites its heartbeat.
	DefaultHeartbeatEvery = time.Second
	// DefaultOwnerTimeout is how long an owner's heartbeat must have
	// been stale before another process takes over its work: five beats,
	// so that a pause of the process or of NATS shorter than that is not
	// taken for a death.
	DefaultOwnerTimeout = 5 * time.Second
)

// ownerBeat is the value of an OwnersBucket key, for operators: the
// liveness is the entry's server timestamp, not these fields.
type ownerBeat struct {
	Owner     string    `json:"owner"`
	Component string    `json:"component"`
	Host      string    `json:"host,omitempty"`
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
}

// owners is one owner's heartbeat and its view of the others'.
type owners struct {
	// kv is nil when the bucket cannot be opened: then nothing is owned
	// (Owner is empty on everything written) and other owners' liveness
	// is unknown, so recovery falls back to the age of what it finds.
	kv      jetstream.KeyValue
	id      string
	value   []byte
	every   time.Duration
	timeout time.Duration
	log     zerolog.Logger

	mu sync.Mutex
	// lastOK is when a heartbeat write last succeeded (local clock).
	lastOK time.Time
	// failing is set while writes fail, so that a failure streak is
	// logged once.
	failing bool
}

// openOwners opens the owners bucket for a new owner id of component.
// A bucket that cannot be opened is logged at error level and leaves the
// owner without heartbeats: its work is then taken over only by age.
func openOwners(ctx context.Context, js jetstream.JetStream, component string, every, timeout time.Duration, log zerolog.Logger) *owners {
	var b [8]byte
	_, _ = rand.Read(b[:])
	host, _ := os.Hostname()
	o := &owners{id: hex.EncodeToString(b[:]), every: every, timeout: timeout, log: log}
	o.value, _ = json.Marshal(ownerBeat{Owner: o.id, Component: component, Host: host, PID: os.Getpid(), StartedAt: time.Now().UTC()})
	kv, err := js.KeyValue(ctx, OwnersBucket)
	if err != nil {
		log.Error().Err(err).Str("bucket", OwnersBucket).
			Msg("no heartbeats: the owners bucket cannot be opened (do the worker's NATS permissions allow it? deploy/nats/accounts.conf); work a process leaves unfinished is taken over only after the fallback age (RecoverAfter, or a send's timeout)")
		return o
	}
	o.kv = kv
	return o
}

// run beats until ctx is done, then removes the heartbeat, so that what
// this owner left is taken over at once. The caller must have stopped
// everything it owns by then.
func (o *owners) run(ctx context.Context) {
	if o.kv == nil {
		return
	}
	t := time.NewTicker(o.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.Background(), o.timeout)
			defer cancel()
			if err := o.kv.Delete(rctx, o.id); err != nil {
				o.log.Warn().Err(err).Str("owner", o.id).Msg("could not remove the heartbeat at stop; what this process left is taken over once it is stale")
			}
			return
		case <-t.C:
			o.beat(ctx)
		}
	}
}

// beat writes the heartbeat once.
func (o *owners) beat(ctx context.Context) {
	if o.kv == nil {
		return
	}
	bctx, cancel := context.WithTimeout(ctx, o.timeout/2)
	_, err := o.kv.Put(bctx, o.id, o.value)
	cancel()
	o.mu.Lock()
	defer o.mu.Unlock()
	if err != nil {
		if !o.failing && ctx.Err() == nil {
			o.log.Warn().Err(err).Str("owner", o.id).Msg("heartbeat write failed; until one succeeds, what this process writes names no owner and is taken over only after the fallback age")
		}
		o.failing = true
		return
	}
	if o.failing {
		o.log.Info().Str("owner", o.id).Msg("heartbeat writes succeed again")
	}
	o.failing, o.lastOK = false, time.Now()
}

// healthy reports whether the last heartbeat write succeeded within half
// the owner timeout: only then may this owner name itself on what it
// writes, since others see it alive for at least the other half.
func (o *owners) healthy() bool {
	if o == nil || o.kv == nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return !o.lastOK.IsZero() && time.Since(o.lastOK) < o.timeout/2
}

// owner is the owner id to write on what this owner drives: its id while
// its heartbeat is healthy, otherwise empty (no owner: others judge the
// work by its age, as before owners existed).
func (o *owners) owner() string {
	if o.healthy() {
		return o.id
	}
	return ""
}

// Owner states, as one liveness view sees them.
const (
	// ownerUnknown: no owner named, or heartbeats cannot be read: the
	// work is judged by its age.
	ownerUnknown = iota
	// ownerSelf: this process.
	ownerSelf
	// ownerAlive: its heartbeat is fresh; it drives its work itself.
	ownerAlive
	// ownerDead: its heartbeat is gone or stale for the owner timeout.
	ownerDead
)

// liveness is one view of the owners' heartbeats, read lazily and cached,
// for one recovery pass.
type liveness struct {
	o *owners
	// ref is the server timestamp of this owner's own latest heartbeat:
	// staleness is measured against it, so that only the NATS servers'
	// clock counts, never this host's. Zero: unknown, every other owner
	// is unknown.
	ref   time.Time
	cache map[string]int
}

// view returns a liveness view. Other owners can be judged only while
// this owner's own heartbeat is healthy and readable.
func (o *owners) view(ctx context.Context) *liveness {
	l := &liveness{o: o, cache: map[string]int{}}
	if !o.healthy() {
		return l
	}
	e, err := o.kv.Get(ctx, o.id)
	if err != nil {
		return l
	}
	l.ref = e.Created()
	return l
}

// state says what owner is: an owner is dead when its key is gone (it
// stopped cleanly, or it expired) or was last written OwnerTimeout or
// more before this owner's own latest heartbeat.
func (l *liveness) state(ctx context.Context, owner string) int {
	switch {
	case owner == "" || l.o == nil:
		return ownerUnknown
	case owner == l.o.id:
		return ownerSelf
	case l.ref.IsZero():
		return ownerUnknown
	}
	if s, ok := l.cache[owner]; ok {
		return s
	}
	s := ownerAlive
	e, err := l.o.kv.Get(ctx, owner)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		s = ownerDead
	case err != nil:
		s = ownerUnknown
	case l.ref.Sub(e.Created()) >= l.o.timeout:
		s = ownerDead
	}
	l.cache[owner] = s
	return s
}

// validateHeartbeats checks a config's heartbeat fields.
func validateHeartbeats(every, timeout time.Duration) error {
	switch {
	case every <= 0:
		return fmt.Errorf("HeartbeatEvery must be positive, got %s", every)
	case timeout < 3*every:
		return fmt.Errorf("OwnerTimeout must be at least three HeartbeatEvery (%s), got %s", 3*every, timeout)
	}
	return nil
}
