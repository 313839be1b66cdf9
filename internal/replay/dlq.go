package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/events"
)

// DLQConfig configures ListDeadLetters and Redrive.
type DLQConfig struct {
	// JetStream reaches the event and dead-letter streams. Required.
	JetStream jetstream.JetStream
	// Select chooses dead letters by their order, type, the time they were
	// dead-lettered and their sequence in the dead-letter stream. Redrive
	// uses it with All only.
	Select Selection
	// Seq, for Redrive, is the one dead letter to send back.
	Seq uint64
	// All, for Redrive, sends back every selected dead letter.
	All bool
	// Out receives one JSON line per dead letter. Required.
	Out io.Writer
}

// Validate reports the first invalid field by name.
func (c DLQConfig) Validate() error {
	switch {
	case c.JetStream == nil:
		return errors.New("JetStream is required")
	case c.Out == nil:
		return errors.New("Out is required")
	case c.Seq != 0 && c.All:
		return errors.New("Seq and All exclude each other")
	case c.Seq != 0 && c.Select != (Selection{}):
		return errors.New("Select applies with All only")
	}
	if err := c.Select.Validate(); err != nil {
		return fmt.Errorf("Select.%w", err)
	}
	return nil
}

// DeadLetterLine is what ListDeadLetters prints per dead letter; the
// stored body follows it as "event".
type DeadLetterLine struct {
	// DLQSeq is its sequence in the dead-letter stream, for Redrive.
	DLQSeq         uint64    `json:"dlq_seq"`
	DeadLetteredAt time.Time `json:"dead_lettered_at"`
	Reason         string    `json:"reason"`
	Deliveries     uint64    `json:"deliveries"`
	// OriginalSeq is its sequence in the event stream.
	OriginalSeq uint64    `json:"original_seq"`
	EventID     string    `json:"event_id"`
	Type        string    `json:"type"`
	OrderID     string    `json:"order_id,omitempty"`
	ReceivedAt  time.Time `json:"received_at"`
	Subject     string    `json:"subject"`
	// Error says why the stored body is not a usable event.
	Error string `json:"error,omitempty"`
}

// RedriveLine is what Redrive prints per dead letter sent back.
type RedriveLine struct {
	DLQSeq  uint64 `json:"dlq_seq"`
	EventID string `json:"event_id"`
	Type    string `json:"type"`
	OrderID string `json:"order_id,omitempty"`
	Reason  string `json:"reason"`
	// MsgID is the message id of the copy on the event stream, and Seq
	// its sequence there.
	MsgID string `json:"msg_id"`
	Seq   uint64 `json:"seq"`
	// Duplicate is true when an earlier attempt had stored the copy
	// already (its removal from the dead-letter stream had not finished).
	Duplicate bool `json:"duplicate,omitempty"`
	// Removed is true once the dead letter is deleted.
	Removed bool `json:"removed"`
}

// ListDeadLetters prints the selected dead letters, oldest first, as JSON
// lines, up to the dead-letter stream's last sequence when it started. It
// writes nothing to NATS. It returns how many it printed.
func ListDeadLetters(ctx context.Context, cfg DLQConfig) (int, error) {
	if err := cfg.Validate(); err != nil {
		return 0, fmt.Errorf("dlq config: %w", err)
	}
	if cfg.Seq != 0 || cfg.All {
		return 0, errors.New("dlq config: Seq and All are for Redrive")
	}
	return scan(ctx, cfg.JetStream, cfg.Select.spec(events.DLQStreamName, events.DLQSubjectPrefix), func(m stored) error {
		dl := events.DecodeDeadLetter(m.Subject, m.Seq, m.Header, m.Data)
		line := DeadLetterLine{
			DLQSeq: dl.Seq, DeadLetteredAt: dl.At, Reason: dl.Reason, Deliveries: dl.Deliveries, OriginalSeq: dl.OriginalSeq,
			EventID: dl.Event.EventID, Type: dl.Event.Type, OrderID: dl.Event.OrderID, ReceivedAt: dl.Event.ReceivedAt, Subject: dl.Subject,
		}
		if line.DeadLetteredAt.IsZero() {
			line.DeadLetteredAt = m.Time
		}
		if dl.DecodeErr != nil {
			line.Error = dl.DecodeErr.Error()
		}
		return writeLine(cfg.Out, line, m.Data)
	})
}

// Redrive sends dead letters back to the event stream so that the workers
// process them again, after the cause was fixed. Each copy keeps the raw
// body and webhook headers but gets its own message id (see
// events.RedriveMsgID), because the event stream still remembers the
// original event id within its duplicate window and would silently drop a
// copy under it; the handlers are idempotent, so a copy of an event that
// did get applied meanwhile changes nothing. A dead letter is deleted only
// after the event stream acknowledged its copy, so a failure at any point
// loses nothing and redriving again stores no second copy. With All, dead
// letters added while it runs (e.g. copies that fail again) are left for
// the next run. It prints a line per dead letter sent back and returns how
// many.
func Redrive(ctx context.Context, cfg DLQConfig) (int, error) {
	if err := cfg.Validate(); err != nil {
		return 0, fmt.Errorf("dlq config: %w", err)
	}
	if cfg.Seq == 0 && !cfg.All {
		return 0, errors.New("dlq config: Seq or All is required")
	}
	dlq, err := cfg.JetStream.Stream(ctx, events.DLQStreamName)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", events.DLQStreamName, err)
	}
	if !cfg.All {
		m, err := getStored(ctx, dlq, cfg.Seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, fmt.Errorf("dead letter %d: not in %s (redriven already?)", cfg.Seq, events.DLQStreamName)
		}
		if err != nil {
			return 0, fmt.Errorf("dead letter %d: %w", cfg.Seq, err)
		}
		if err := redriveOne(ctx, cfg.JetStream, dlq, m, cfg.Out); err != nil {
			return 0, err
		}
		return 1, nil
	}
	n := 0
	_, err = scan(ctx, cfg.JetStream, cfg.Select.spec(events.DLQStreamName, events.DLQSubjectPrefix), func(m stored) error {
		if err := redriveOne(ctx, cfg.JetStream, dlq, m, cfg.Out); err != nil {
			return err
		}
		n++
		return nil
	})
	return n, err
}

func redriveOne(ctx context.Context, js jetstream.JetStream, dlq jetstream.Stream, m stored, out io.Writer) error {
	dl := events.DecodeDeadLetter(m.Subject, m.Seq, m.Header, m.Data)
	msg := events.RedriveMsg(dl)
	line := RedriveLine{DLQSeq: dl.Seq, EventID: dl.Event.EventID, Type: dl.Event.Type, OrderID: dl.Event.OrderID, Reason: dl.Reason, MsgID: msg.Header.Get(jetstream.MsgIDHeader)}
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithExpectStream(events.StreamName))
	if err != nil {
		return fmt.Errorf("redrive dead letter %d: publish: %w", dl.Seq, err)
	}
	line.Seq, line.Duplicate = ack.Sequence, ack.Duplicate
	if err := dlq.DeleteMsg(ctx, dl.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		// Stored but still listed: print what happened, then fail, so the
		// operator runs it again (the copy is not stored twice).
		_ = writeJSON(out, line)
		return fmt.Errorf("redrive dead letter %d: stored as seq %d but not removed: %w", dl.Seq, ack.Sequence, err)
	}
	line.Removed = true
	return writeJSON(out, line)
}
