package replay_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/testutil"
)

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2026-03-04T10:00:00Z":           time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC),
		"2026-03-04T10:00:00.5+01:00":    time.Date(2026, 3, 4, 9, 0, 0, 5e8, time.UTC),
		"2h":                             now.Add(-2 * time.Hour),
		"90m":                            now.Add(-90 * time.Minute),
		"0s":                             now,
		"2026-03-04T10:00:00.123456789Z": time.Date(2026, 3, 4, 10, 0, 0, 123456789, time.UTC),
	} {
		got, err := replay.ParseTime(in, now)
		require.NoError(t, err, in)
		require.True(t, want.Equal(got), "%s: got %s want %s", in, got, want)
	}
	for _, bad := range []string{"", "yesterday", "-2h", "2026-03-04"} {
		_, err := replay.ParseTime(bad, now)
		require.Error(t, err, bad)
	}
}

func TestSelectionValidateNamesTheField(t *testing.T) {
	now := time.Now()
	err := replay.Selection{Since: now, Until: now.Add(-time.Hour)}.Validate()
	require.ErrorContains(t, err, "Until")
	require.NoError(t, replay.Selection{Since: now, Until: now}.Validate())
}

// oddBody is a genuine-looking event whose bytes a re-encoding would
// change: spaces around tokens, HTML characters, an escape and raw UTF-8.
const oddBody = `{ "event_id" : "O-sel-b-odd", "type":"payment.order.status.updated", "note":"<a&b> \u00e9 é",` +
	` "data":{"data_type":"PaymentOrder","order_id":"O-sel-b","merchant_id":"M1001","status":"Pending","updated_timestamp":50} }`

func TestReplaySelectsByOrderTypeTimeAndSequence(t *testing.T) {
	s := newStack(t)
	a := s.postHistory(t, "O-sel-a") // seq 1..5
	s.post(t, []byte(oddBody))       // seq 6
	// The stream stamps events when it stores them, after ingest's ack
	// for the first ones and before it for the later ones.
	time.Sleep(5 * time.Millisecond)
	mid := time.Now()
	time.Sleep(5 * time.Millisecond)
	b := s.postHistory(t, "O-sel-b") // seq 7..11

	lines, sum, err := s.runReplay(t, replay.Config{Select: replay.Selection{OrderID: "O-sel-a"}})
	require.NoError(t, err)
	require.Equal(t, 5, sum.Events)
	require.Equal(t, a, eventsOf(lines), "each line embeds the stored body byte for byte")
	for i, l := range lines {
		require.Equal(t, uint64(i+1), l.uint(t, "seq"))
		require.Equal(t, "O-sel-a", l.str(t, "order_id"))
		require.NotEmpty(t, l.str(t, "event_id"))
		require.NotEmpty(t, l.str(t, "type"))
		_, err := time.Parse(time.RFC3339Nano, l.str(t, "received_at"))
		require.NoError(t, err)
		require.NotContains(t, l.fields, "verified", "read-only replay neither verifies nor applies")
		require.NotContains(t, l.fields, "applied")
	}

	lines, _, err = s.runReplay(t, replay.Config{Select: replay.Selection{OrderID: "O-sel-b"}})
	require.NoError(t, err)
	require.Equal(t, append([][]byte{[]byte(oddBody)}, b...), eventsOf(lines))
	require.Contains(t, string(lines[0].raw), `"event":`+oddBody+`}`, "the body is embedded verbatim, not re-encoded")

	lines, _, err = s.runReplay(t, replay.Config{Select: replay.Selection{Type: cobo.EventTransactionLate}})
	require.NoError(t, err)
	require.Equal(t, [][]byte{a[3], b[3]}, eventsOf(lines))

	lines, _, err = s.runReplay(t, replay.Config{Select: replay.Selection{OrderID: "O-sel-b", Type: cobo.EventTransactionLate}})
	require.NoError(t, err)
	require.Equal(t, [][]byte{b[3]}, eventsOf(lines))

	lines, _, err = s.runReplay(t, replay.Config{Select: replay.Selection{Since: mid}})
	require.NoError(t, err)
	require.Equal(t, b, eventsOf(lines))

	lines, _, err = s.runReplay(t, replay.Config{Select: replay.Selection{Until: mid}})
	require.NoError(t, err)
	require.Equal(t, append(append([][]byte{}, a...), []byte(oddBody)), eventsOf(lines))

	since, err := replay.ParseTime("1h", time.Now())
	require.NoError(t, err)
	lines, _, err = s.runReplay(t, replay.Config{Select: replay.Selection{Since: since, OrderID: "O-sel-a"}})
	require.NoError(t, err)
	require.Len(t, lines, 5)

	lines, _, err = s.runReplay(t, replay.Config{Select: replay.Selection{FromSeq: 9}})
	require.NoError(t, err)
	require.Equal(t, b[2:], eventsOf(lines))
	require.Equal(t, uint64(9), lines[0].uint(t, "seq"))

	lines, _, err = s.runReplay(t, replay.Config{Select: replay.Selection{FromSeq: 3, Until: mid, OrderID: "O-sel-a"}})
	require.NoError(t, err)
	require.Equal(t, a[2:], eventsOf(lines))

	for _, sel := range []replay.Selection{{OrderID: "O-none"}, {FromSeq: 12}, {Since: time.Now().Add(time.Hour)}, {Type: "payment.unknown"}} {
		lines, sum, err = s.runReplay(t, replay.Config{Select: sel})
		require.NoError(t, err, "%+v", sel)
		require.Empty(t, lines, "%+v", sel)
		require.Zero(t, sum.Events)
	}
}

// publishingWriter stores one more event the first time replay writes,
// i.e. while the replay is running.
type publishingWriter struct {
	t    *testing.T
	js   jetstream.JetStream
	once sync.Once
	buf  bytes.Buffer
}

func (w *publishingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() {
		dup, err := events.NewPublisher(w.js).Store(context.Background(), cobo.Delivery{
			Envelope: cobo.Envelope{EventID: "O-end-after", Type: cobo.EventOrderStatusUpdated, OrderID: "O-end"},
			Body:     testutil.OrderEvent("O-end-after", "O-end", "M1001", "Expired", 900, "0"),
		})
		require.NoError(w.t, err)
		require.False(w.t, dup)
	})
	return w.buf.Write(p)
}

func TestReplayEndsAtTheLastSequenceAtStart(t *testing.T) {
	s := newStack(t)
	h := s.postHistory(t, "O-end")
	w := &publishingWriter{t: t, js: s.js}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sum, err := replay.Replay(ctx, replay.Config{JetStream: s.js, Select: replay.Selection{OrderID: "O-end"}, Out: w})
	require.NoError(t, err)
	require.Equal(t, 5, sum.Events)
	require.Equal(t, h, eventsOf(parseLines(t, w.buf.Bytes())), "the event stored during the replay is not part of it")
	require.Equal(t, uint64(6), s.streamInfo(t, events.StreamName).State.Msgs)
}

func TestVerifyFlagsTamperedStoredEvents(t *testing.T) {
	s := newStack(t)
	h := s.postHistory(t, "O-ver")
	// A forged copy of the Completed event: other amount, other id, but
	// the genuine event's stored timestamp and signature.
	st, err := s.js.Stream(context.Background(), events.StreamName)
	require.NoError(t, err)
	genuine, err := st.GetMsg(context.Background(), 3)
	require.NoError(t, err)
	require.Equal(t, h[2], genuine.Data)
	forged := bytes.Replace(h[2], []byte(`"received_token_amount":"102.000001"`), []byte(`"received_token_amount":"999"`), 1)
	forged = bytes.Replace(forged, []byte(`"O-ver-completed"`), []byte(`"O-ver-forged"`), 1)
	env, err := cobo.ParseEnvelope(forged)
	require.NoError(t, err)
	_, err = events.NewPublisher(s.js).Store(context.Background(), cobo.Delivery{
		Envelope: env, Body: forged, ReceivedAt: time.Now(),
		Timestamp: genuine.Header.Get(events.HeaderTimestamp), Signature: genuine.Header.Get(events.HeaderSignature),
	})
	require.NoError(t, err)

	v, err := cobo.NewVerifier(s.signer.PubHex)
	require.NoError(t, err)
	lines, sum, err := s.runReplay(t, replay.Config{Select: replay.Selection{OrderID: "O-ver"}, Verifier: v})
	require.ErrorIs(t, err, replay.ErrVerifyFailed)
	require.Len(t, lines, 6, "every line is printed before the failure is reported")
	require.Equal(t, 5, sum.Verified)
	require.Equal(t, 1, sum.VerifyFailed)
	for _, l := range lines[:5] {
		require.Equal(t, "true", string(l.fields["verified"]), string(l.raw))
		require.NotContains(t, l.fields, "verify_error")
	}
	require.Equal(t, "O-ver-forged", lines[5].str(t, "event_id"))
	require.Equal(t, "false", string(lines[5].fields["verified"]))
	require.Contains(t, lines[5].str(t, "verify_error"), "no trusted key verifies it")
	require.Equal(t, forged, []byte(lines[5].fields["event"]))

	// Cobo's own dev key did not sign the test events.
	dev, err := cobo.NewVerifier(cobo.DevWebhookKey)
	require.NoError(t, err)
	_, sum, err = s.runReplay(t, replay.Config{Select: replay.Selection{OrderID: "O-ver"}, Verifier: dev})
	require.ErrorIs(t, err, replay.ErrVerifyFailed)
	require.Equal(t, 6, sum.VerifyFailed)
}

func TestReplayDoesNotDisturbTheLiveConsumer(t *testing.T) {
	s := newStack(t)
	s.startWorker(t)
	s.postHistory(t, "O-live-1")
	s.waitWorkersIdle(t)
	before := s.workerConsumer(t)

	v, err := cobo.NewVerifier(s.signer.PubHex)
	require.NoError(t, err)
	for range 3 {
		lines, _, err := s.runReplay(t, replay.Config{Verifier: v})
		require.NoError(t, err)
		require.Len(t, lines, 5)
	}
	after := s.workerConsumer(t)
	require.Equal(t, before.Delivered, after.Delivered, "no delivery of the durable consumer")
	require.Equal(t, before.AckFloor, after.AckFloor, "no ack on the durable consumer")
	require.Equal(t, before.NumAckPending, after.NumAckPending)
	require.Equal(t, before.NumRedelivered, after.NumRedelivered)
	require.Equal(t, before.NumPending, after.NumPending)
	require.Equal(t, []string{events.ConsumerName}, s.consumerNames(t), "replay consumers are removed when done")

	// Replays while the worker is busy: it still gets every event exactly
	// once.
	replayErr := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < 3 && err == nil; i++ {
			_, err = replay.Replay(context.Background(), replay.Config{JetStream: s.js, Select: replay.Selection{OrderID: "O-live-2"}, Out: &bytes.Buffer{}})
		}
		replayErr <- err
	}()
	s.postHistory(t, "O-live-2")
	require.NoError(t, <-replayErr)
	s.waitWorkersIdle(t)
	info := s.workerConsumer(t)
	require.Equal(t, uint64(10), info.Delivered.Consumer, "each event delivered once")
	require.Zero(t, info.NumRedelivered)
	require.True(t, s.orderComplete(t, "O-live-2"))
	require.Equal(t, []string{events.ConsumerName}, s.consumerNames(t))
}

func (s *stack) consumerNames(t *testing.T) []string {
	t.Helper()
	st, err := s.js.Stream(context.Background(), events.StreamName)
	require.NoError(t, err)
	lister := st.ConsumerNames(context.Background())
	var names []string
	for n := range lister.Name() {
		names = append(names, n)
	}
	require.NoError(t, lister.Err())
	return names
}
