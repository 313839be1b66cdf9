// Package replay holds the operator's tools over the stored events: replay
// the event stream (read-only by default, optionally re-verifying the
// stored signatures and re-applying events through the workers' own
// path), and list or redrive the dead-letter stream. Every read is
// bounded by the stream's last sequence when it started and goes through
// an ordered consumer of its own, so no live consumer notices it.
package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/apply"
	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/handlers"
)

// Errors Replay returns after printing every line, matched with errors.Is.
var (
	// ErrVerifyFailed means at least one stored signature did not verify.
	ErrVerifyFailed = errors.New("signature verification failed")
	// ErrApplyFailed means at least one event could not be applied.
	ErrApplyFailed = errors.New("apply failed")
)

// Selection chooses stored events. Zero fields select everything; set
// fields must all match.
type Selection struct {
	// OrderID selects one order's events (a subject filter: only that
	// order's messages are read).
	OrderID string
	// Type selects one event type, e.g. payment.transaction.late.
	Type string
	// Since and Until bound the time the stream stored the event,
	// inclusive. Since is where the read starts.
	Since, Until time.Time
	// FromSeq is the first stream sequence read.
	FromSeq uint64
}

// Validate reports the first invalid field by name.
func (s Selection) Validate() error {
	if !s.Since.IsZero() && !s.Until.IsZero() && s.Until.Before(s.Since) {
		return fmt.Errorf("Until (%s) is before Since (%s)", s.Until.Format(time.RFC3339), s.Since.Format(time.RFC3339))
	}
	return nil
}

// filter returns the subject filter of s under prefix, whose subjects are
// <prefix>.<type>.<order>: under events.SubjectPrefix, events.OrderFilter
// or events.TypeFilter (or the one subject when both are set), so the
// server reads only the matching messages; the same shape serves the
// dead-letter stream.
func (s Selection) filter(prefix string) string {
	typ, order := "*", "*"
	if s.Type != "" {
		typ = events.TypeToken(s.Type)
	}
	if s.OrderID != "" {
		order = events.Token(s.OrderID)
	}
	if s.Type == "" && s.OrderID == "" {
		return prefix + ".>"
	}
	return prefix + "." + typ + "." + order
}

func (s Selection) spec(stream, prefix string) scanSpec {
	return scanSpec{stream: stream, filter: s.filter(prefix), fromSeq: s.FromSeq, since: s.Since, until: s.Until}
}

// ParseTime reads a -since or -until value: an RFC 3339 time, or a
// duration such as 2h or 90m meaning that long before now.
func ParseTime(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration such as 2h", s)
	}
	if d < 0 {
		return time.Time{}, fmt.Errorf("duration %q must not be negative", s)
	}
	return now.Add(-d), nil
}

// DefaultHandleTimeout bounds applying one event, as in the workers.
const DefaultHandleTimeout = events.DefaultHandleTimeout

// Config configures Replay.
type Config struct {
	// JetStream reaches the event stream. Required.
	JetStream jetstream.JetStream
	// Select chooses the events.
	Select Selection
	// Verifier, when set, re-checks each event's stored signature against
	// its trusted keys.
	Verifier *cobo.Verifier
	// Apply re-runs the workers' processing (the apply core) for each
	// selected event, oldest first. It needs Verifier: as in the workers,
	// events that fail verification are not applied.
	Apply bool
	// Allocation must be what the workers plan with when they run with
	// rules (worker.AllocationConfig.Plan); see apply.Allocation. Apply
	// needs it, or NoAllocations.
	Allocation *apply.Allocation
	// NoAllocations states that the workers run without rules, so applying
	// state only is what they do too.
	NoAllocations bool
	// Stream sizes the orders bucket, should Apply have to create it.
	Stream events.StreamConfig
	// HandleTimeout bounds applying one event.
	HandleTimeout time.Duration
	// Out receives one JSON line per event. Required.
	Out io.Writer
	// Logger gets what a worker would log while applying (the zero value
	// discards it); what changed is in the lines anyway.
	Logger zerolog.Logger
}

// WithDefaults returns a copy with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.HandleTimeout == 0 {
		c.HandleTimeout = DefaultHandleTimeout
	}
	c.Stream = c.Stream.WithDefaults()
	return c
}

// Validate reports the first invalid field by name.
func (c Config) Validate() error {
	switch {
	case c.JetStream == nil:
		return errors.New("JetStream is required")
	case c.Out == nil:
		return errors.New("Out is required")
	case c.Apply && c.Allocation == nil && !c.NoAllocations:
		// Applying without the planner while the workers plan would let an
		// order reach Completed with no splits planned, for good.
		return errors.New("Apply needs Allocation (the workers' rules) or NoAllocations (the workers run without rules)")
	case c.Allocation != nil && c.NoAllocations:
		return errors.New("Allocation and NoAllocations contradict each other")
	case c.HandleTimeout <= 0:
		return fmt.Errorf("HandleTimeout must be positive, got %s", c.HandleTimeout)
	}
	if c.Apply {
		// Apply runs the workers' core, whose needs (a Verifier, the
		// rules) are its own to check.
		if err := c.applyConfig().Validate(); err != nil {
			return fmt.Errorf("Apply: %w", err)
		}
	}
	if err := c.Select.Validate(); err != nil {
		return fmt.Errorf("Select.%w", err)
	}
	return nil
}

func (c Config) applyConfig() apply.Config {
	return apply.Config{Verifier: c.Verifier, Allocation: c.Allocation, Logger: c.Logger}
}

// Line is what Replay prints per event; the stored body follows it as
// "event" (see writeLine).
type Line struct {
	// Seq is the event's sequence in the event stream.
	Seq uint64 `json:"seq"`
	// ReceivedAt is when ingest received it; StoredAt when the stream
	// stored it.
	ReceivedAt time.Time `json:"received_at"`
	StoredAt   time.Time `json:"stored_at"`
	EventID    string    `json:"event_id"`
	Type       string    `json:"type"`
	OrderID    string    `json:"order_id,omitempty"`
	Subject    string    `json:"subject"`
	// RedrivenFrom is the dead-letter sequence a redriven copy came from.
	RedrivenFrom string `json:"redriven_from_dlq_seq,omitempty"`
	// Error says why the stored body is not a usable event.
	Error string `json:"error,omitempty"`
	// Verified and VerifyError are set with a Verifier.
	Verified    *bool  `json:"verified,omitempty"`
	VerifyError string `json:"verify_error,omitempty"`
	// Applied is set with Apply.
	Applied *Applied `json:"applied,omitempty"`
}

// Applied is what applying one event did.
type Applied struct {
	// Result is handlers' result (applied, unchanged, ignored, no_order),
	// or invalid (the workers dead-letter such an event), error
	// (transient; applying again is safe) or skipped (not verified).
	Result string `json:"result"`
	// StatusFrom and StatusTo are set when the order's status moved.
	StatusFrom string `json:"status_from,omitempty"`
	StatusTo   string `json:"status_to,omitempty"`
	// FirstCompleted marks the event that first completed the order.
	FirstCompleted bool `json:"first_completed,omitempty"`
	// LateRecorded lists the transaction ids of late payments recorded.
	LateRecorded []string `json:"late_recorded,omitempty"`
	// Planned lists the allocation items planned (and published).
	Planned []string `json:"planned,omitempty"`
	// ConflictingFinal is a final status that contradicted the stored one.
	ConflictingFinal string `json:"conflicting_final,omitempty"`
	// Warning is a non-fatal problem, e.g. an order fetch that failed.
	Warning string `json:"warning,omitempty"`
	// Error explains invalid, error and skipped.
	Error string `json:"error,omitempty"`
}

// Summary counts what Replay did.
type Summary struct {
	Events       int `json:"events"`
	Verified     int `json:"verified"`
	VerifyFailed int `json:"verify_failed"`
	Applied      int `json:"applied"`
	Unchanged    int `json:"unchanged"`
	ApplyFailed  int `json:"apply_failed"`
}

// Replay prints the selected events of the event stream, oldest first, as
// JSON lines, and ends at the stream's last sequence when it started. It
// writes nothing to NATS unless Apply is set. After printing every line it
// returns an error wrapping ErrVerifyFailed or ErrApplyFailed when any
// event failed either.
func Replay(ctx context.Context, cfg Config) (Summary, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return Summary{}, fmt.Errorf("replay config: %w", err)
	}
	var sum Summary
	var orders *events.OrderStore
	var proc *apply.Processor
	if cfg.Apply {
		stream := cfg.Stream
		stream.Logger = cfg.Logger
		kv, err := events.EnsureOrdersBucket(ctx, cfg.JetStream, stream)
		if err != nil {
			return sum, err
		}
		if orders, err = events.OpenOrderStore(ctx, cfg.JetStream, kv, stream); err != nil {
			return sum, err
		}
		if proc, err = apply.Open(ctx, cfg.JetStream, orders, cfg.applyConfig()); err != nil {
			return sum, err
		}
	}
	_, err := scan(ctx, cfg.JetStream, cfg.Select.spec(events.StreamName, events.SubjectPrefix), func(m stored) error {
		sum.Events++
		line, d, decodeErr := describe(m)
		verified := true
		if cfg.Verifier != nil {
			verr := cfg.Verifier.Verify(m.Data, m.Header.Get(events.HeaderTimestamp), m.Header.Get(events.HeaderSignature))
			verified = verr == nil
			line.Verified = &verified
			if verified {
				sum.Verified++
			} else {
				sum.VerifyFailed++
				line.VerifyError = verr.Error()
			}
		}
		if proc != nil {
			line.Applied = applyEvent(ctx, cfg, proc, orders, events.Event{Delivery: d, Seq: m.Seq}, decodeErr, verified)
			switch line.Applied.Result {
			case string(handlers.Applied):
				sum.Applied++
			case string(handlers.Unchanged), string(handlers.Ignored), string(handlers.NoOrder):
				sum.Unchanged++
			default:
				sum.ApplyFailed++
			}
		}
		return writeLine(cfg.Out, line, m.Data)
	})
	if err != nil {
		return sum, err
	}
	var errs []error
	if sum.VerifyFailed > 0 {
		errs = append(errs, fmt.Errorf("%w: %d of %d events", ErrVerifyFailed, sum.VerifyFailed, sum.Events))
	}
	if sum.ApplyFailed > 0 {
		errs = append(errs, fmt.Errorf("%w: %d of %d events", ErrApplyFailed, sum.ApplyFailed, sum.Events))
	}
	return sum, errors.Join(errs...)
}

// describe decodes a stored event into its line. The delivery is only
// usable when the error is nil.
func describe(m stored) (Line, cobo.Delivery, error) {
	d, err := events.DecodeDelivery(m.Header, m.Data)
	line := Line{Seq: m.Seq, StoredAt: m.Time, Subject: m.Subject, RedrivenFrom: m.Header.Get(events.HeaderRedrivenFrom),
		EventID: d.EventID, Type: d.Type, OrderID: d.OrderID, ReceivedAt: d.ReceivedAt}
	if err != nil {
		// Ingest wrote these from the envelope it parsed, so they name
		// the event even when the stored body does not.
		line.Error = err.Error()
		line.Type, line.OrderID = m.Header.Get(events.HeaderEventType), m.Header.Get(events.HeaderOrderID)
		line.EventID = strings.SplitN(m.Header.Get(jetstream.MsgIDHeader), ":redrive:", 2)[0]
		line.ReceivedAt, _ = time.Parse(time.RFC3339Nano, m.Header.Get(events.HeaderReceivedAt))
	}
	if line.ReceivedAt.IsZero() {
		line.ReceivedAt = m.Time
	}
	return line, d, err
}

// applyEvent runs the workers' processing for one event and says what
// changed.
func applyEvent(ctx context.Context, cfg Config, proc *apply.Processor, orders *events.OrderStore, ev events.Event, decodeErr error, verified bool) *Applied {
	switch {
	case decodeErr != nil:
		return &Applied{Result: "invalid", Error: decodeErr.Error()}
	case !verified:
		return &Applied{Result: "skipped", Error: "signature not verified"}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.HandleTimeout)
	defer cancel()
	// The status before is read separately, for the report only: another
	// writer may commit in between, which the compare-and-set in Process
	// accounts for anyway.
	var before domain.OrderStatus
	if ev.OrderID != "" {
		if o, _, err := orders.Get(ctx, ev.OrderID); err == nil {
			before = o.Status
		}
	}
	out, err := proc.Apply(ctx, ev)
	if errors.Is(err, domain.ErrInvalid) {
		return &Applied{Result: "invalid", Error: err.Error()}
	}
	if err != nil {
		return &Applied{Result: "error", Error: err.Error()}
	}
	a := &Applied{Result: string(out.Result), FirstCompleted: out.FirstCompleted, ConflictingFinal: string(out.ConflictingFinal)}
	if out.StatusTo != "" {
		a.StatusFrom, a.StatusTo = string(before), string(out.StatusTo)
	}
	for _, lp := range out.LateRecorded {
		a.LateRecorded = append(a.LateRecorded, lp.TransactionID)
	}
	for _, it := range out.Planned {
		a.Planned = append(a.Planned, it.ID)
	}
	return a
}
