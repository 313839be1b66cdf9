package bitgosim

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

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

// faultKinds lists every FaultKind, in the order error messages name them.
var faultKinds = []FaultKind{FaultError500, FaultDrop, FaultLoseResponse, FaultSlow, FaultReserveRetriable, FaultReserved, FaultRelease}

// ParseFaultKind accepts a kind's name (error500, drop, lose, slow,
// reserve_retriable, reserved or release), ignoring case and surrounding
// space.
func ParseFaultKind(s string) (FaultKind, error) {
	name := FaultKind(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(faultKinds, name) {
		return name, nil
	}
	names := make([]string, len(faultKinds))
	for i, k := range faultKinds {
		names[i] = string(k)
	}
	return "", fmt.Errorf("unknown fault kind %q: want one of %s", s, strings.Join(names, ", "))
}

// ParseFaultList parses a comma-separated list of kind[:count[:delay]],
// such as "error500:2,lose,slow:1:2s", into faults in the order given: the
// syntax of the sandbox command's -bitgo-faults flag. Count defaults to 1
// and must be a positive integer; delay, used by FaultSlow, must be a
// positive duration. Empty entries are skipped, so "" is no fault.
func ParseFaultList(s string) ([]Fault, error) {
	var out []Fault
	for _, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		parts := strings.Split(entry, ":")
		if len(parts) > 3 {
			return nil, fmt.Errorf("fault %q: want kind[:count[:delay]]", entry)
		}
		kind, err := ParseFaultKind(parts[0])
		if err != nil {
			return nil, fmt.Errorf("fault %q: %w", entry, err)
		}
		f := Fault{Kind: kind, Count: 1}
		if len(parts) > 1 {
			if f.Count, err = strconv.Atoi(parts[1]); err != nil || f.Count < 1 {
				return nil, fmt.Errorf("fault %q: count must be a positive integer", entry)
			}
		}
		if len(parts) > 2 {
			if f.Delay, err = time.ParseDuration(parts[2]); err != nil || f.Delay <= 0 {
				return nil, fmt.Errorf("fault %q: delay must be a positive duration such as 2s", entry)
			}
		}
		out = append(out, f)
	}
	return out, nil
}
