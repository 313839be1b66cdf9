package bitgosim

import "time"

// FaultKind names a failure the simulator injects into a POST allocation.
type FaultKind string

// Fault kinds. Each says what the client observes and whether an
// allocation was recorded, which is what exactly-once tests care about.
const (
	// FaultError500 answers 500 {"error"} without recording anything.
	FaultError500 FaultKind = "error500"
	// FaultDrop loses the request inside BitGo before any allocation is
	// recorded, after its nonce was spent (see Config.NonceOnce): the
	// connection is closed without an answer, so the client cannot tell
	// it from a lost answer.
	FaultDrop FaultKind = "drop"
	// FaultLoseResponse records the allocation (or finds the one already
	// recorded for the clientExternalId), then answers 502 from a "proxy":
	// the effect happened but the client cannot know it.
	FaultLoseResponse FaultKind = "lose"
	// FaultSlow waits Delay (DefaultSlowDelay when zero), cut short if the
	// client gives up, then processes the request normally, so it is
	// recorded even if the client is gone.
	FaultSlow FaultKind = "slow"
	// FaultReserveRetriable answers 500 with a reserved allocation with
	// retriable=true, without recording it: BitGo asks for the identical
	// request again.
	FaultReserveRetriable FaultKind = "reserve_retriable"
	// FaultReserved records a new allocation as reserved
	// (retriable=false) and answers 200; the next read of it (Get, list or
	// a replayed POST) finds it cleared.
	FaultReserved FaultKind = "reserved"
	// FaultRelease records a new allocation as released with reason
	// "insufficient balance" and answers 422; replays answer the same.
	FaultRelease FaultKind = "release"
)

// DefaultSlowDelay is FaultSlow's delay when Fault.Delay is zero.
const DefaultSlowDelay = time.Second

// Fault is a queued failure for upcoming POST allocations that pass
// authentication, validation and the signature check. It applies to the
// next Count of them (one when Count is zero or less), then it is used up.
// Faults apply in the order they were injected. FaultReserved and
// FaultRelease shape a NEW allocation only; a replay of a recorded
// clientExternalId consumes them and answers the recorded outcome.
type Fault struct {
	Kind  FaultKind
	Count int
	// Delay is used by FaultSlow.
	Delay time.Duration
}
