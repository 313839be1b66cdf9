package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/replay"
)

// DeadLetterKinds are the kinds of dead-letter reasons, the part of the
// reason before the first colon (README, "Inspect dead letters").
var DeadLetterKinds = []string{"invalid", "unparseable", "untrusted", "unknown_order", "unconfirmed", "max_deliveries"}

// operatorKinds are the dead-letter kinds the overview lists among the
// errors an operator must act on: events that are not Cobo's or not ours.
var operatorKinds = []string{"untrusted", "unknown_order"}

// MaxRedrive bounds the dead letters one redrive call sends back.
const MaxRedrive = 1000

// DeadLetter is a dead letter as `worker dlq list` prints it, with the
// stored body.
type DeadLetter struct {
	replay.DeadLetterLine
	// Event is the stored body when it is JSON; BodyBase64 holds the exact
	// bytes when they could not be embedded as they are.
	Event      json.RawMessage `json:"event,omitempty"`
	BodyBase64 string          `json:"body_base64,omitempty"`
}

// Kind is the reason's kind, e.g. unknown_order.
func (d DeadLetter) Kind() string {
	k, _, _ := strings.Cut(d.Reason, ":")
	return strings.TrimSpace(k)
}

// dlqState identifies the dead-letter stream's content: any dead letter
// added or removed changes it.
type dlqState struct {
	first, last, msgs uint64
}

// dlqCache lists the dead letters with replay.ListDeadLetters, and lists
// them again only when the stream's state changed: the overview asks
// every few seconds, and the stream rarely changes.
type dlqCache struct {
	js    jetstream.JetStream
	max   int
	mu    sync.Mutex
	state dlqState
	items []DeadLetter
	valid bool
}

// list returns every dead letter (the newest of the last max sequences),
// oldest first. The slice is shared: callers must not change it.
func (c *dlqCache) list(ctx context.Context) ([]DeadLetter, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.js.Stream(ctx, events.DLQStreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		// The workers create it with their first start.
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dead letters: stream %s: %w", events.DLQStreamName, err)
	}
	s := st.CachedInfo().State
	state := dlqState{s.FirstSeq, s.LastSeq, s.Msgs}
	if c.valid && state == c.state {
		return c.items, nil
	}
	sel := replay.Selection{}
	if state.last > uint64(c.max) {
		sel.FromSeq = state.last - uint64(c.max) + 1
	}
	var out bytes.Buffer
	if _, err := replay.ListDeadLetters(ctx, replay.DLQConfig{JetStream: c.js, Select: sel, Out: &out}); err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	items, err := decodeLines[DeadLetter](out.Bytes())
	if err != nil {
		return nil, fmt.Errorf("dead letters: %w", err)
	}
	c.items, c.state, c.valid = items, state, true
	return items, nil
}

// forget makes the next list read the stream again.
func (c *dlqCache) forget() {
	c.mu.Lock()
	c.valid = false
	c.mu.Unlock()
}

// DeadLetterFilter selects dead letters; empty fields select all.
type DeadLetterFilter struct {
	// Kind is the reason's kind (DeadLetterKinds).
	Kind    string
	Type    string
	OrderID string
}

func (f DeadLetterFilter) match(d DeadLetter) bool {
	return (f.Kind == "" || d.Kind() == f.Kind) && (f.Type == "" || d.Type == f.Type) && (f.OrderID == "" || d.OrderID == f.OrderID)
}

// DeadLetterList is the dead letters a filter selects, newest first.
type DeadLetterList struct {
	DeadLetters []DeadLetter `json:"dead_letters"`
	// Total is how many the stream holds; ByKind and Types count them.
	Total  int            `json:"total"`
	ByKind map[string]int `json:"by_kind"`
	Types  []string       `json:"types"`
}

// deadLetters lists the dead letters f selects, newest first.
func (c *Console) deadLetters(ctx context.Context, f DeadLetterFilter) (DeadLetterList, error) {
	all, err := c.dlq.list(ctx)
	if err != nil {
		return DeadLetterList{}, err
	}
	out := DeadLetterList{DeadLetters: []DeadLetter{}, Total: len(all), ByKind: map[string]int{}}
	for i := len(all) - 1; i >= 0; i-- {
		d := all[i]
		out.ByKind[d.Kind()]++
		if d.Type != "" && !slices.Contains(out.Types, d.Type) {
			out.Types = append(out.Types, d.Type)
		}
		if f.match(d) {
			out.DeadLetters = append(out.DeadLetters, d)
		}
	}
	slices.Sort(out.Types)
	return out, nil
}

// RedriveResult is what redriving one dead letter did: the line `worker
// dlq redrive` prints, or why it failed.
type RedriveResult struct {
	DLQSeq uint64              `json:"dlq_seq"`
	Line   *replay.RedriveLine `json:"redriven,omitempty"`
	Error  string              `json:"error,omitempty"`
}

// redrive sends the dead letters seqs back to the event stream, one by
// one with replay.Redrive, and reports each.
func (c *Console) redrive(ctx context.Context, seqs []uint64) []RedriveResult {
	defer c.dlq.forget()
	out := make([]RedriveResult, 0, len(seqs))
	for _, seq := range seqs {
		r := RedriveResult{DLQSeq: seq}
		var buf bytes.Buffer
		_, err := replay.Redrive(ctx, replay.DLQConfig{JetStream: c.js, Seq: seq, Out: &buf})
		if lines, derr := decodeLines[replay.RedriveLine](buf.Bytes()); derr == nil && len(lines) > 0 {
			r.Line = &lines[0]
		}
		if err != nil {
			r.Error = err.Error()
		}
		out = append(out, r)
	}
	return out
}

// EventOutcome is what became of a stored event: waiting for the workers,
// processed, or processed and dead-lettered (again).
type EventOutcome struct {
	Seq uint64 `json:"seq"`
	// State is "waiting", "processed" or "dead_lettered".
	State string `json:"state"`
	// AckFloor is the workers' consumer's ack floor: every event up to it
	// is processed.
	AckFloor uint64 `json:"ack_floor"`
	// DeadLetter is set when the event was dead-lettered.
	DeadLetter *DeadLetter `json:"dead_letter,omitempty"`
}

// outcome tells what became of the event at seq of the event stream, e.g.
// the copy of a redriven dead letter.
func (c *Console) outcome(ctx context.Context, seq uint64) (EventOutcome, error) {
	floor, err := c.ackFloor(ctx)
	if err != nil {
		return EventOutcome{}, err
	}
	o := EventOutcome{Seq: seq, AckFloor: floor, State: "waiting"}
	if floor < seq {
		return o, nil
	}
	o.State = "processed"
	all, err := c.dlq.list(ctx)
	if err != nil {
		return EventOutcome{}, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].OriginalSeq == seq {
			o.State, o.DeadLetter = "dead_lettered", &all[i]
			break
		}
	}
	return o, nil
}

// decodeLines decodes JSON lines into Ts.
func decodeLines[T any](b []byte) ([]T, error) {
	var out []T
	dec := json.NewDecoder(bytes.NewReader(b))
	for dec.More() {
		var v T
		if err := dec.Decode(&v); err != nil {
			return out, fmt.Errorf("decode line: %w", err)
		}
		out = append(out, v)
	}
	return out, nil
}
