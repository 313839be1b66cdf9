package replay_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/testutil"
)

func TestDeadLettersAreListedAndRedrivenAfterAFix(t *testing.T) {
	s := newStack(t).withAllocations(t)
	s.startWorker(t)

	// A late payment for an order Cobo does not know (yet): the worker
	// cannot learn its merchant and dead-letters it at once.
	late := testutil.TransactionEvent("late-unknown", "late", "O-dlq", "tx-dlq", "7.25")
	s.post(t, late)
	lateSeq := s.streamInfo(t, events.StreamName).State.LastSeq
	// An event no worker can ever parse, stored by a buggy producer.
	bad := nats.NewMsg(events.Subject(cobo.EventOrderUpdated, "O-bad"))
	bad.Data = []byte("not json")
	bad.Header.Set(jetstream.MsgIDHeader, "bad-1")
	_, err := s.js.PublishMsg(context.Background(), bad)
	require.NoError(t, err)
	badSeq := lateSeq + 1
	testutil.WaitFor(t, 20*time.Second, "two dead letters", func() bool {
		return s.streamInfo(t, events.DLQStreamName).State.Msgs == 2
	})

	lines := s.listDLQ(t, replay.Selection{})
	require.Len(t, lines, 2)
	lateDL, badDL := lines[0], lines[1]
	if lateDL.uint(t, "original_seq") != lateSeq {
		lateDL, badDL = badDL, lateDL
	}
	require.Equal(t, lateSeq, lateDL.uint(t, "original_seq"))
	require.True(t, strings.HasPrefix(lateDL.str(t, "reason"), "unknown_order: "), lateDL.str(t, "reason"))
	require.Equal(t, uint64(1), lateDL.uint(t, "deliveries"))
	require.Equal(t, "late-unknown", lateDL.str(t, "event_id"))
	require.Equal(t, cobo.EventTransactionLate, lateDL.str(t, "type"))
	require.Equal(t, "O-dlq", lateDL.str(t, "order_id"))
	require.Equal(t, late, []byte(lateDL.fields["event"]))
	_, err = time.Parse(time.RFC3339Nano, lateDL.str(t, "dead_lettered_at"))
	require.NoError(t, err)

	require.Equal(t, badSeq, badDL.uint(t, "original_seq"))
	require.True(t, strings.HasPrefix(badDL.str(t, "reason"), "unparseable: "), badDL.str(t, "reason"))
	require.NotEmpty(t, badDL.str(t, "error"))
	require.Equal(t, "bad-1", badDL.str(t, "event_id"), "the stored message id, kept though the body is unreadable")
	require.NotContains(t, badDL.fields, "event")
	require.Equal(t, base64.StdEncoding.EncodeToString([]byte("not json")), badDL.str(t, "body_base64"))

	require.Len(t, s.listDLQ(t, replay.Selection{OrderID: "O-dlq"}), 1)
	require.Len(t, s.listDLQ(t, replay.Selection{Type: cobo.EventTransactionLate}), 1)

	// Sent back under its own event id it would be dropped: the event
	// stream still remembers it.
	again := nats.NewMsg(events.Subject(cobo.EventTransactionLate, "O-dlq"))
	again.Data = late
	again.Header.Set(jetstream.MsgIDHeader, "late-unknown")
	ack, err := s.js.PublishMsg(context.Background(), again)
	require.NoError(t, err)
	require.True(t, ack.Duplicate)

	// The fix: Cobo knows the order now. Redrive makes a worker process
	// the event again, and removes the dead letter.
	s.alloc.sim.PutOrder(cobo.OrderData{OrderID: "O-dlq", MerchantID: "M1001", Status: "Expired", PayableCurrency: "ETH_USDT",
		PayableAmount: amount("102"), ReceivedTokenAmount: amount("0"), FeeAmount: amount("2"), UpdatedTimestamp: 500})
	dlqSeq := lateDL.uint(t, "dlq_seq")
	dlqStream, err := s.js.Stream(context.Background(), events.DLQStreamName)
	require.NoError(t, err)
	kept, err := dlqStream.GetMsg(context.Background(), dlqSeq)
	require.NoError(t, err)

	out, err := s.redrive(t, replay.DLQConfig{Seq: dlqSeq})
	require.NoError(t, err)
	require.Len(t, out, 1)
	require.Equal(t, dlqSeq, out[0].uint(t, "dlq_seq"))
	require.Equal(t, fmt.Sprintf("late-unknown:redrive:%d", dlqSeq), out[0].str(t, "msg_id"))
	require.Equal(t, "true", string(out[0].fields["removed"]))
	require.NotContains(t, out[0].fields, "duplicate")
	testutil.WaitFor(t, 20*time.Second, "the redriven late payment allocated", func() bool {
		o, _, ok := s.order(t, "O-dlq")
		return ok && len(o.LatePayments) == 1 && len(o.Allocations) == 1 && o.Allocations[0].Status == domain.AllocCompleted
	})
	o, _, _ := s.order(t, "O-dlq")
	require.Equal(t, "7.25", o.LatePayments[0].Amount.String())
	require.Equal(t, "M1001", o.Allocations[0].Destination)
	rest := s.listDLQ(t, replay.Selection{})
	require.Len(t, rest, 1)
	require.Equal(t, badDL.uint(t, "dlq_seq"), rest[0].uint(t, "dlq_seq"))

	// Redriven already: nothing to send.
	_, err = s.redrive(t, replay.DLQConfig{Seq: dlqSeq})
	require.ErrorContains(t, err, "redriven already")
	// A redrive retried after a lost acknowledgement stores no second copy.
	ack, err = s.js.PublishMsg(context.Background(), events.RedriveMsg(events.DecodeDeadLetter(kept.Subject, kept.Sequence, kept.Header, kept.Data)))
	require.NoError(t, err)
	require.True(t, ack.Duplicate)

	// The replay shows the copy next to the original.
	lines, _, err = s.runReplay(t, replay.Config{Select: replay.Selection{OrderID: "O-dlq"}})
	require.NoError(t, err)
	require.Len(t, lines, 2)
	require.Equal(t, [][]byte{late, late}, eventsOf(lines))
	require.Equal(t, fmt.Sprint(dlqSeq), lines[1].str(t, "redriven_from_dlq_seq"))
	require.Equal(t, "late-unknown", lines[1].str(t, "event_id"))

	// -all stops at the dead letters there were when it started: the
	// unparseable event fails again and waits for the next run.
	out, err = s.redrive(t, replay.DLQConfig{All: true})
	require.NoError(t, err)
	require.Len(t, out, 1)
	require.Equal(t, badDL.uint(t, "dlq_seq"), out[0].uint(t, "dlq_seq"))
	require.Equal(t, fmt.Sprintf("bad-1:redrive:%d", badDL.uint(t, "dlq_seq")), out[0].str(t, "msg_id"))
	testutil.WaitFor(t, 20*time.Second, "the unparseable event dead-lettered again", func() bool {
		return s.streamInfo(t, events.DLQStreamName).State.Msgs == 1
	})
	rest = s.listDLQ(t, replay.Selection{})
	require.Len(t, rest, 1)
	require.Greater(t, rest[0].uint(t, "dlq_seq"), badDL.uint(t, "dlq_seq"))
	require.True(t, strings.HasPrefix(rest[0].str(t, "reason"), "unparseable: "))
	require.Equal(t, "bad-1", rest[0].str(t, "event_id"))
}

func TestRedriveNeedsOneOfSeqAndAll(t *testing.T) {
	_, js := testutil.Connect(t, testutil.StartJetStream(t))
	for _, cfg := range []replay.DLQConfig{
		{JetStream: js},
		{JetStream: js, Seq: 1, All: true},
		{JetStream: js, Seq: 1, Select: replay.Selection{OrderID: "O1"}},
	} {
		cfg.Out = &strings.Builder{}
		_, err := replay.Redrive(context.Background(), cfg)
		require.Error(t, err, "%+v", cfg)
	}
}
