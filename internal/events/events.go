// Package events owns how webhook deliveries live on NATS JetStream: the
// stored message format, the subjects, the streams and buckets, publishing,
// the consumer loop with its dead-letter queue, and the order-state bucket.
package events

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/cobo"
)

// Names of the JetStream resources paystream uses.
const (
	// StreamName holds every verified webhook, by age, for processing and replay.
	StreamName = "PAYSTREAM_EVENTS"
	// SubjectPrefix prefixes event subjects: <prefix>.<type>.<order>.
	SubjectPrefix = "paystream.events"
	// DLQStreamName holds events that could not be processed, with the reason.
	DLQStreamName = "PAYSTREAM_DLQ"
	// DLQSubjectPrefix prefixes dead-letter subjects: <prefix>.<type>.<order>.
	DLQSubjectPrefix = "paystream.dlq"
	// OrdersBucket is the key-value bucket of order state, keyed by OrderKey.
	OrdersBucket = "paystream_orders"
	// ConsumerName is the durable pull consumer all workers share.
	ConsumerName = "paystream-worker"
)

// Headers stored with each event. The body is the raw webhook body.
const (
	HeaderTimestamp  = "Cobo-Biz-Timestamp"
	HeaderSignature  = "Cobo-Biz-Resp-Signature"
	HeaderReceivedAt = "Paystream-Received-At"
	HeaderEventType  = "Paystream-Event-Type"
	HeaderOrderID    = "Paystream-Order-Id"
	// DLQ-only headers.
	HeaderDLQReason     = "Paystream-Dlq-Reason"
	HeaderDLQDeliveries = "Paystream-Dlq-Deliveries"
	HeaderDLQOrigSeq    = "Paystream-Dlq-Original-Seq"
	HeaderDLQAt         = "Paystream-Dlq-At"
	// HeaderDLQOrigMsgID keeps the event's own Nats-Msg-Id (its event_id,
	// or a redrive id), which the dead letter cannot keep as its message id.
	HeaderDLQOrigMsgID = "Paystream-Dlq-Original-Msg-Id"
)

// NoOrderToken stands in the subject for events that name no order.
const NoOrderToken = "_"

// Token makes s safe as one NATS subject token and as a KV key: ids made of
// letters, digits, '-' and '_' (up to 128 bytes) are kept as they are, and
// anything else becomes "=" and a hash, which cannot collide with a kept id.
func Token(s string) string {
	if s == "" {
		return NoOrderToken
	}
	if len(s) <= 128 && isSafe(s) {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return "=" + hex.EncodeToString(sum[:20])
}

func isSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// TypeToken returns the subject token of a Cobo event type: its dots become
// underscores so that the type is exactly one token.
func TypeToken(eventType string) string {
	return Token(strings.ReplaceAll(eventType, ".", "_"))
}

// Subject returns the subject an event is stored under:
// paystream.events.<type>.<order>. Consumers filter by type with
// paystream.events.<type>.* and by order with paystream.events.*.<order>.
func Subject(eventType, orderID string) string {
	return SubjectPrefix + "." + TypeToken(eventType) + "." + Token(orderID)
}

// OrderFilter returns the subject filter for every event of one order.
func OrderFilter(orderID string) string {
	return SubjectPrefix + ".*." + Token(orderID)
}

// TypeFilter returns the subject filter for every event of one type.
func TypeFilter(eventType string) string {
	return SubjectPrefix + "." + TypeToken(eventType) + ".*"
}

// OrderKey returns the key of an order in the orders bucket.
func OrderKey(orderID string) string { return Token(orderID) }

// Event is a stored webhook delivery as a consumer sees it.
type Event struct {
	cobo.Delivery
	// Seq is the event's sequence in the stream.
	Seq uint64
	// NumDelivered counts deliveries of this message to consumers, from 1.
	NumDelivered uint64
}

// NewMsg builds the message that stores a delivery. The event id is the
// JetStream message id, so the stream drops duplicates within its window.
func NewMsg(d cobo.Delivery) *nats.Msg {
	msg := nats.NewMsg(Subject(d.Type, d.OrderID))
	msg.Data = d.Body
	msg.Header.Set(jetstream.MsgIDHeader, d.EventID)
	msg.Header.Set(HeaderTimestamp, d.Timestamp)
	msg.Header.Set(HeaderSignature, d.Signature)
	msg.Header.Set(HeaderReceivedAt, d.ReceivedAt.UTC().Format(time.RFC3339Nano))
	msg.Header.Set(HeaderEventType, d.Type)
	if d.OrderID != "" {
		msg.Header.Set(HeaderOrderID, d.OrderID)
	}
	return msg
}

// DecodeDelivery rebuilds a delivery from a stored message's headers and
// body. It fails, wrapping cobo.ErrMalformedEvent, when the body is not a
// usable event.
func DecodeDelivery(h nats.Header, body []byte) (cobo.Delivery, error) {
	// The data is decoded for the handlers in the same pass that lifts the
	// routing fields: it is read once.
	env, decoded, err := cobo.ParseEnvelopeData(body)
	if err != nil {
		return cobo.Delivery{}, err
	}
	d := cobo.Delivery{
		Envelope:  env,
		Decoded:   decoded,
		Body:      body,
		Timestamp: h.Get(HeaderTimestamp),
		Signature: h.Get(HeaderSignature),
	}
	if ts := h.Get(HeaderReceivedAt); ts != "" {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			d.ReceivedAt = t
		}
	}
	return d, nil
}

// DecodeMsg rebuilds the Event a consumer received.
func DecodeMsg(msg jetstream.Msg) (Event, error) {
	d, err := DecodeDelivery(msg.Headers(), msg.Data())
	ev := Event{Delivery: d}
	if md, mdErr := msg.Metadata(); mdErr == nil {
		ev.Seq = md.Sequence.Stream
		ev.NumDelivered = md.NumDelivered
		if ev.ReceivedAt.IsZero() {
			ev.ReceivedAt = md.Timestamp
		}
	}
	if err != nil {
		return ev, fmt.Errorf("decode event at seq %d: %w", ev.Seq, err)
	}
	return ev, nil
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
