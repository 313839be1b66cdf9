package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/cobo"
)

// Publisher stores verified deliveries on the event stream.
type Publisher struct {
	publish func(ctx context.Context, msg *nats.Msg) (*jetstream.PubAck, error)
}

// NewPublisher returns a Publisher that stores each delivery with its own
// synchronous publish on js. The stream must exist.
func NewPublisher(js jetstream.JetStream) *Publisher {
	return &Publisher{publish: func(ctx context.Context, msg *nats.Msg) (*jetstream.PubAck, error) {
		return PublishDeduplicated(ctx, js, msg, StreamName)
	}}
}

// NewGroupPublisher returns a Publisher that stores deliveries through g,
// which must publish to the event stream: concurrent deliveries share a
// disk sync, and each is still answered only once it is stored.
func NewGroupPublisher(g *GroupCommitter) *Publisher {
	return &Publisher{publish: g.Publish}
}

// errCodeDuplicateInProcess is JetStream's "duplicate message id is in
// process" (10158): on a replicated stream, another publish of the same
// message id is being stored right now.
const errCodeDuplicateInProcess = 10158

// Store publishes d and returns once JetStream has acknowledged it as
// stored. duplicate is true when the stream already held d's event_id.
//
// Cobo may deliver one event twice at once; PublishDeduplicated waits for
// the copy being stored and reports the duplicate, rather than failing.
func (p *Publisher) Store(ctx context.Context, d cobo.Delivery) (duplicate bool, err error) {
	ack, err := p.publish(ctx, NewMsg(d))
	if err != nil {
		return false, fmt.Errorf("publish event %s: %w", d.EventID, err)
	}
	return ack.Duplicate, nil
}

// PublishDeduplicated publishes msg, which carries a Nats-Msg-Id, to
// stream and returns the acknowledgement. While another publish of the
// same message id is being stored, a replicated stream refuses this one
// with 10158 ("duplicate message id is in process"), which is no failure:
// PublishDeduplicated waits for that copy, retrying until ctx ends, and
// then returns the duplicate's acknowledgement.
func PublishDeduplicated(ctx context.Context, js jetstream.Publisher, msg *nats.Msg, stream string) (*jetstream.PubAck, error) {
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		ack, err := js.PublishMsg(ctx, msg, jetstream.WithExpectStream(stream))
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeDuplicateInProcess {
			return ack, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("another copy is still being stored: %w", err)
		case <-time.After(wait):
		}
	}
}
