package cobosim

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// FaultKind names a failure the simulator injects into a request.
type FaultKind string

// Fault kinds. Each describes what the client observes and whether the
// request took effect, which is what exactly-once tests care about.
const (
	// FaultError500 answers 500 {error_code:1000} without processing: the
	// request had no effect.
	FaultError500 FaultKind = "error500"
	// FaultLoseResponse processes and records the request normally, then
	// answers 502 with an HTML body from a "proxy": the effect happened but
	// the client cannot know it.
	FaultLoseResponse FaultKind = "lose"
	// FaultTimeout processes and records the request, then holds the answer
	// for Delay (DefaultTimeoutDelay when zero) or until the client gives
	// up: the effect happened and the client times out.
	FaultTimeout FaultKind = "timeout"
	// FaultSlow waits Delay (DefaultSlowDelay when zero), cut short if the
	// client gives up, then processes normally.
	FaultSlow FaultKind = "slow"
	// FaultRateLimit answers 429 {error_code:2010} without processing.
	FaultRateLimit FaultKind = "ratelimit"
	// FaultUnauthorized answers 401 {error_code:2023} ("Missing or invalid
	// API signature") to an authentic request without processing it, as
	// Cobo answers a rotated key, a skewed clock or a refused nonce: the
	// request had no effect. A large count on a path prefix stands for a
	// key Cobo refuses until an operator fixes it (DELETE /sandbox/faults).
	FaultUnauthorized FaultKind = "unauthorized"
	// FaultPricingPlan answers 400 {error_code:30001} ("The pricing plan
	// does not support this feature") to a request whose body names a
	// request_id the simulator never stored, without processing it: the
	// code Cobo also uses for "request_id already used", with no batch
	// behind it. A request_id already stored gets the ordinary answer (the
	// fault is spent all the same).
	FaultPricingPlan FaultKind = "pricing_plan"
)

// Default delays of FaultTimeout and FaultSlow when Fault.Delay is zero.
// The timeout default exceeds cobo.DefaultAttemptTimeout so that a client
// with default settings does time out.
const (
	DefaultTimeoutDelay = 15 * time.Second
	DefaultSlowDelay    = time.Second
)

// ParseFaultKind accepts a kind's name or an alias: "500"/"error500",
// "lose"/"lose_response"/"502", "timeout", "slow", "429"/"ratelimit"/
// "rate_limit", "401"/"unauthorized", "30001"/"pricing_plan". Matching
// ignores case.
func ParseFaultKind(s string) (FaultKind, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "500", "error500", "error_500":
		return FaultError500, nil
	case "lose", "lose_response", "lost", "502":
		return FaultLoseResponse, nil
	case "timeout":
		return FaultTimeout, nil
	case "slow":
		return FaultSlow, nil
	case "429", "ratelimit", "rate_limit":
		return FaultRateLimit, nil
	case "401", "unauthorized", "unauthorised":
		return FaultUnauthorized, nil
	case "30001", "pricing_plan", "pricing":
		return FaultPricingPlan, nil
	}
	return "", fmt.Errorf("unknown fault kind %q: want 500, lose, timeout, slow, 429, unauthorized or 30001", s)
}

// Fault is a queued failure. It applies to the next Count authenticated
// /v2 requests whose method equals Method and whose path starts with
// PathPrefix (an empty field matches anything), then it is used up. Faults
// are matched in the order they were injected.
//
// In JSON (POST /sandbox/faults) it reads {"method", "path_prefix", "kind",
// "count", "delay"}, with delay a Go duration string such as "2s" and kind
// anything ParseFaultKind accepts.
type Fault struct {
	Method     string
	PathPrefix string
	Kind       FaultKind
	// Count is how many requests the fault affects; zero or less means one.
	Count int
	// Delay is used by FaultTimeout and FaultSlow.
	Delay time.Duration
}

type faultJSON struct {
	Method     string    `json:"method,omitempty"`
	PathPrefix string    `json:"path_prefix,omitempty"`
	Kind       FaultKind `json:"kind"`
	Count      int       `json:"count,omitempty"`
	Delay      string    `json:"delay,omitempty"`
}

// MarshalJSON implements json.Marshaler with delay as a duration string.
func (f Fault) MarshalJSON() ([]byte, error) {
	j := faultJSON{Method: f.Method, PathPrefix: f.PathPrefix, Kind: f.Kind, Count: f.Count}
	if f.Delay != 0 {
		j.Delay = f.Delay.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON implements json.Unmarshaler. It rejects unknown kinds and
// malformed delays so that an operator's typo is reported, not ignored.
func (f *Fault) UnmarshalJSON(b []byte) error {
	var j faultJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	kind, err := ParseFaultKind(string(j.Kind))
	if err != nil {
		return err
	}
	var delay time.Duration
	if j.Delay != "" {
		if delay, err = time.ParseDuration(j.Delay); err != nil {
			return fmt.Errorf("fault delay: %w", err)
		}
		if delay < 0 {
			return fmt.Errorf("fault delay %s is negative", delay)
		}
	}
	*f = Fault{Method: strings.ToUpper(j.Method), PathPrefix: j.PathPrefix, Kind: kind, Count: j.Count, Delay: delay}
	return nil
}

func (f Fault) matches(method, path string) bool {
	return (f.Method == "" || strings.EqualFold(f.Method, method)) &&
		(f.PathPrefix == "" || strings.HasPrefix(path, f.PathPrefix))
}

// ParseFaultList parses a comma-separated list of kind[:count[:delay]],
// such as "500:2,lose:1,slow:1:3s", into faults with the given method and
// path prefix. It is the syntax of the sandbox command's -faults flag.
func ParseFaultList(s, method, pathPrefix string) ([]Fault, error) {
	var out []Fault
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		fields := strings.Split(part, ":")
		if len(fields) > 3 {
			return nil, fmt.Errorf("fault %q: want kind[:count[:delay]]", part)
		}
		kind, err := ParseFaultKind(fields[0])
		if err != nil {
			return nil, err
		}
		f := Fault{Method: method, PathPrefix: pathPrefix, Kind: kind, Count: 1}
		if len(fields) > 1 {
			if f.Count, err = strconv.Atoi(fields[1]); err != nil || f.Count < 1 {
				return nil, fmt.Errorf("fault %q: count must be a positive integer", part)
			}
		}
		if len(fields) > 2 {
			if f.Delay, err = time.ParseDuration(fields[2]); err != nil || f.Delay < 0 {
				return nil, fmt.Errorf("fault %q: delay must be a non-negative duration such as 2s", part)
			}
		}
		out = append(out, f)
	}
	return out, nil
}
