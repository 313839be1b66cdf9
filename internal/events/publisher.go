package events

import (
	"context"
	"fmt"

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

// Store publishes d and returns once JetStream has acknowledged it as
// stored. duplicate is true when the stream already held d's event_id.
func (p *Publisher) Store(ctx context.Context, d cobo.Delivery) (duplicate bool, err error) {
	ack, err := p.js.PublishMsg(ctx, NewMsg(d), jetstream.WithExpectStream(StreamName))
	if err != nil {
		return false, fmt.Errorf("publish event %s: %w", d.EventID, err)
	}
	return ack.Duplicate, nil
}
