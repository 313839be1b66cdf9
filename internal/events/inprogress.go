package events

import (
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// InProgressEvery is how often a message held longer than its consumer's
// ack wait is marked in progress: a third of the ack wait, so that two
// marks in a row may be late or lost before the server redelivers it.
func InProgressEvery(ackWait time.Duration) time.Duration {
	return max(ackWait/3, 10*time.Millisecond)
}

// KeepInProgress marks msg in progress (msg.InProgress, which restarts
// the server's ack wait) every interval until stop is called or until is
// reached (never when zero), whichever comes first. It lets a consumer
// with a short ack wait hold a message for as long as its work takes,
// while a process that dies stops marking and its messages are
// redelivered one ack wait after the last mark. stop returns once no mark
// is being sent, so that none follows the caller's ack or nak (a mark
// after a delayed nak would restart the ack wait in place of the delay).
// Marks are sent from a timer, not a goroutine of their own, so a message
// handled within interval costs one timer.
func KeepInProgress(msg jetstream.Msg, interval time.Duration, until time.Time) (stop func()) {
	k := &inProgress{msg: msg, interval: interval, until: until}
	k.mu.Lock()
	k.timer = time.AfterFunc(interval, k.mark)
	k.mu.Unlock()
	return k.stop
}

type inProgress struct {
	msg      jetstream.Msg
	interval time.Duration
	until    time.Time

	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

func (k *inProgress) mark() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return
	}
	if !k.until.IsZero() && time.Now().After(k.until) {
		// Past its bound the work is not trusted to end: the message is
		// left to the ack wait, and redelivered if nothing answers it.
		return
	}
	// Under the lock: stop waits for a mark being sent. A failed mark
	// changes nothing (the next one tries again, and without any the
	// message is redelivered, which is always safe), but on a closed
	// connection, or once the message is answered, none will ever be sent.
	if err := k.msg.InProgress(); errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		return
	}
	k.timer.Reset(k.interval)
}

func (k *inProgress) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopped = true
	k.timer.Stop()
}
