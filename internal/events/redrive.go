package events

import (
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HeaderRedrivenFrom is set on an event sent back from the dead-letter
// stream: the dead letter's sequence there.
const HeaderRedrivenFrom = "Paystream-Redriven-From-Dlq-Seq"

// dlqOnlyHeaders are written by the consumer when it dead-letters an event;
// a redriven copy drops them so that a new failure is recorded afresh.
var dlqOnlyHeaders = []string{HeaderDLQReason, HeaderDLQDeliveries, HeaderDLQOrigSeq, HeaderDLQAt, HeaderDLQOrigMsgID}

// DeadLetter is an event as the dead-letter stream holds it.
type DeadLetter struct {
	// Seq is the dead letter's sequence in the dead-letter stream.
	Seq uint64
	// Subject is its subject there: paystream.dlq.<type>.<order>.
	Subject string
	// Reason is the kind and the cause, e.g. "invalid: ...".
	Reason string
	// Deliveries is how many times the event was delivered before.
	Deliveries uint64
	// OriginalSeq is the event's sequence in the event stream.
	OriginalSeq uint64
	// At is when it was dead-lettered.
	At time.Time
	// Event identifies the stored webhook; DecodeErr says why its body
	// does not decode (an unparseable event), when it does not.
	Event     EventRef
	DecodeErr error
	// Header and Body are the stored headers and raw body.
	Header nats.Header
	Body   []byte
}

// EventRef identifies a stored event. For a body that does not parse, the
// type, order and received time come from the headers ingest wrote.
type EventRef struct {
	EventID, Type, OrderID string
	ReceivedAt             time.Time
}

// DecodeDeadLetter reads a message of the dead-letter stream. It never
// fails: fields that are absent or malformed stay zero, and an unparseable
// body is reported in DecodeErr.
func DecodeDeadLetter(subject string, seq uint64, h nats.Header, body []byte) DeadLetter {
	dl := DeadLetter{Seq: seq, Subject: subject, Reason: h.Get(HeaderDLQReason), Header: h, Body: body}
	dl.Deliveries, _ = strconv.ParseUint(h.Get(HeaderDLQDeliveries), 10, 64)
	dl.OriginalSeq, _ = strconv.ParseUint(h.Get(HeaderDLQOrigSeq), 10, 64)
	dl.At, _ = time.Parse(time.RFC3339Nano, h.Get(HeaderDLQAt))
	d, err := DecodeDelivery(h, body)
	dl.DecodeErr = err
	dl.Event = EventRef{EventID: d.EventID, Type: d.Type, OrderID: d.OrderID, ReceivedAt: d.ReceivedAt}
	if err != nil {
		// Ingest wrote the type and order headers from the envelope it
		// parsed, and the worker kept the message id; they identify the
		// event even when the stored body does not.
		dl.Event = EventRef{EventID: eventIDOf(h), Type: h.Get(HeaderEventType), OrderID: h.Get(HeaderOrderID)}
		dl.Event.ReceivedAt, _ = time.Parse(time.RFC3339Nano, h.Get(HeaderReceivedAt))
	}
	return dl
}

// eventIDOf returns the event_id a dead letter's original message id
// carries: the id itself, or, for a redriven copy, the part before its
// ":redrive:<dlq seq>" suffix ("" for the stand-in of an unknown id).
func eventIDOf(h nats.Header) string {
	id := h.Get(HeaderDLQOrigMsgID)
	if seq := h.Get(HeaderRedrivenFrom); seq != "" {
		id = strings.TrimSuffix(id, redriveInfix+seq)
		if id == unknownEventID {
			id = ""
		}
	}
	return id
}

// RedriveMsgID returns the message id a dead letter is sent back under:
// <event_id>:redrive:<dlq seq>. It must differ from the event id, which the
// event stream remembers for its whole duplicate window and would drop
// silently; and it is the same for every attempt to redrive one dead
// letter, so a retry after a lost acknowledgement stores a single copy.
func RedriveMsgID(eventID string, dlqSeq uint64) string {
	if eventID == "" {
		eventID = unknownEventID
	}
	return eventID + redriveInfix + strconv.FormatUint(dlqSeq, 10)
}

const (
	redriveInfix   = ":redrive:"
	unknownEventID = "unparseable"
)

// RedriveMsg builds the message that sends dead letter dl back to the event
// stream for the workers: the raw body and the stored webhook headers
// unchanged (so the signature still verifies), under the event's subject,
// with RedriveMsgID as message id and HeaderRedrivenFrom set.
func RedriveMsg(dl DeadLetter) *nats.Msg {
	// An unparseable event goes back under its dead-letter subject's
	// tokens; it is dead-lettered again unless the cause was elsewhere.
	subject := SubjectPrefix + ".unparseable." + NoOrderToken
	if rest, ok := strings.CutPrefix(dl.Subject, DLQSubjectPrefix+"."); ok {
		subject = SubjectPrefix + "." + rest
	}
	if dl.DecodeErr == nil {
		subject = Subject(dl.Event.Type, dl.Event.OrderID)
	}
	msg := nats.NewMsg(subject)
	msg.Data = dl.Body
	for k, v := range dl.Header {
		// Publish expectations were the dead-letter publish's own (its
		// stream); the caller sets its own.
		if strings.HasPrefix(k, "Nats-Expected-") || IsBatchHeader(k) {
			continue
		}
		msg.Header[k] = append([]string(nil), v...)
	}
	for _, k := range dlqOnlyHeaders {
		msg.Header.Del(k)
	}
	msg.Header.Set(jetstream.MsgIDHeader, RedriveMsgID(dl.Event.EventID, dl.Seq))
	msg.Header.Set(HeaderRedrivenFrom, strconv.FormatUint(dl.Seq, 10))
	return msg
}
