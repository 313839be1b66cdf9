package replay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Bounds of a scan.
const (
	// idleWait bounds one wait for the next message.
	idleWait = 2 * time.Second
	// maxIdle is how many waits in a row may pass without a message while
	// the consumer still reports pending messages before the scan fails.
	maxIdle = 5
	// untilSlack is how far past Until a stored time may be before the
	// scan stops early: stored times come from the stream leader's clock,
	// which may step back a little after a leader change, so a message
	// just past Until does not prove that all later ones are.
	untilSlack = time.Minute
	// consumerIdle is when the server removes a replay consumer left
	// behind by a replay that died; a finished replay deletes it at once.
	consumerIdle = 30 * time.Second
)

// stored is one message of a stream, however it was read.
type stored struct {
	Subject string
	Seq     uint64
	// Time is when the stream stored it.
	Time   time.Time
	Header nats.Header
	Data   []byte
}

// scanSpec says which messages of a stream a scan visits.
type scanSpec struct {
	stream  string
	filter  string
	fromSeq uint64
	since   time.Time
	until   time.Time
}

// scan calls fn for every message of spec, oldest first, up to the
// stream's last sequence when the scan started: messages stored later are
// not visited, so a scan always ends. It reads through an ordered consumer
// of its own (ephemeral, unacknowledged, in memory), which no other
// consumer notices, and deletes it when done. The subject filter is
// applied by the server, so a filter on one order reads that order only.
// It returns how many messages fn saw.
func scan(ctx context.Context, js jetstream.JetStream, spec scanSpec, fn func(stored) error) (int, error) {
	st, err := js.Stream(ctx, spec.stream)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", spec.stream, err)
	}
	state := st.CachedInfo().State
	last := state.LastSeq
	if state.Msgs == 0 || last < spec.fromSeq {
		return 0, nil
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    []string{spec.filter},
		NamePrefix:        consumerPrefix(),
		InactiveThreshold: consumerIdle,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
	}
	switch {
	case spec.fromSeq > 0:
		// Since, when also set, is checked below: a consumer has one start.
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, spec.fromSeq
	case !spec.since.IsZero():
		since := spec.since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("replay consumer on %s: %w", spec.stream, err)
	}
	defer func() {
		// The ordered consumer may have replaced its server consumer; the
		// current one is deleted here, earlier ones by the library.
		if info := cons.CachedInfo(); info != nil {
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = js.DeleteConsumer(dctx, spec.stream, info.Name)
			cancel()
		}
	}()
	if info := cons.CachedInfo(); info == nil || info.NumPending == 0 {
		return 0, nil
	}
	// A short pull expiry and heartbeat, as the workers' consumer has: a
	// pull lost with its server (a leader change in a cluster) shows as
	// missing heartbeats within two seconds, and the ordered consumer
	// starts again where it was, well before the idle limit below. With
	// the library's defaults (30 s expiry) that took longer than the limit.
	it, err := cons.Messages(jetstream.PullMaxMessages(256), jetstream.PullExpiry(5*time.Second), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		return 0, fmt.Errorf("replay %s: %w", spec.stream, err)
	}
	defer it.Stop()

	seen := 0
	// At most one delivery per stored sequence: the loop is bounded by the
	// stream's size at start even if the end were never recognised.
	for delivered, idle := uint64(0), 0; delivered <= last; {
		if err := ctx.Err(); err != nil {
			return seen, err
		}
		msg, err := it.Next(jetstream.NextMaxWait(idleWait))
		if errors.Is(err, nats.ErrTimeout) {
			// Nothing pending means the matching messages ran out (some
			// may have aged out while we read).
			info, ierr := cons.Info(ctx)
			if ierr == nil && info.NumPending == 0 {
				return seen, nil
			}
			if idle++; idle >= maxIdle {
				return seen, fmt.Errorf("replay %s: no message for %s though some are pending", spec.stream, maxIdle*idleWait)
			}
			continue
		}
		if err != nil {
			return seen, fmt.Errorf("replay %s: %w", spec.stream, err)
		}
		idle = 0
		delivered++
		md, err := msg.Metadata()
		if err != nil {
			return seen, fmt.Errorf("replay %s: %w", spec.stream, err)
		}
		seq := md.Sequence.Stream
		if seq > last {
			return seen, nil
		}
		if !spec.until.IsZero() && md.Timestamp.After(spec.until.Add(untilSlack)) {
			return seen, nil
		}
		inWindow := (spec.since.IsZero() || !md.Timestamp.Before(spec.since)) &&
			(spec.until.IsZero() || !md.Timestamp.After(spec.until))
		if inWindow {
			seen++
			if err := fn(stored{Subject: msg.Subject(), Seq: seq, Time: md.Timestamp, Header: msg.Headers(), Data: msg.Data()}); err != nil {
				return seen, err
			}
		}
		if seq >= last || md.NumPending == 0 {
			return seen, nil
		}
	}
	return seen, nil
}

// getStored reads one message by sequence with a plain stream get, which
// involves no consumer.
func getStored(ctx context.Context, st jetstream.Stream, seq uint64) (stored, error) {
	m, err := st.GetMsg(ctx, seq)
	if err != nil {
		return stored{}, err
	}
	return stored{Subject: m.Subject, Seq: m.Sequence, Time: m.Time, Header: m.Header, Data: m.Data}, nil
}

// consumerPrefix names replay consumers so an operator listing consumers
// recognises them; the random part keeps concurrent replays apart.
func consumerPrefix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "paystream-replay-" + hex.EncodeToString(b)
}
