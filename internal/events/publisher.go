package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/cobo"
)

// Publisher stores verified deliveries on the event stream.
type Publisher struct {
	js jetstream.JetStream
}

// NewPublisher returns a Publisher on js. The stream must exist.
func NewPublisher(js jetstream.JetStream) *Publisher {
	return &Publisher{js: js}
}

// errCodeDuplicateInProcess is JetStream's "duplicate message id is in
// process" (10158): on a replicated stream, another publish of the same
// message id is being stored right now.
const errCodeDuplicateInProcess = 10158

// Store publishes d and returns once JetStream has acknowledged it as
// stored. duplicate is true when the stream already held d's event_id.
//
// Cobo may deliver one event twice at once. While the first copy is being
// replicated, a replicated stream refuses the second with 10158, which is
// not a store failure: Store waits for the first (retrying until ctx ends)
// and then reports the duplicate.
func (p *Publisher) Store(ctx context.Context, d cobo.Delivery) (duplicate bool, err error) {
	msg := NewMsg(d)
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(StreamName))
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeDuplicateInProcess {
			select {
			case <-ctx.Done():
				return false, fmt.Errorf("publish event %s: another copy is still being stored: %w", d.EventID, err)
			case <-time.After(wait):
				continue
			}
		}
		if err != nil {
			return false, fmt.Errorf("publish event %s: %w", d.EventID, err)
		}
		return ack.Duplicate, nil
	}
}
