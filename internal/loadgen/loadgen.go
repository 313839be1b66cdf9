// Package loadgen sends signed Cobo webhooks to an ingest endpoint and
// summarises throughput and latency. cmd/loadgen and the benchmark runner
// use it; every run is bounded by a request count and a duration.
package loadgen

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/paystream/paystream/internal/cobo"
)

// DefaultSeed names the deterministic load-generator key. It is a test key
// only: never trust it in production.
const DefaultSeed = "paystream-loadgen-test-key"

// KeyFromSeed derives the Ed25519 key loadgen signs with.
func KeyFromSeed(seed string) ed25519.PrivateKey {
	sum := sha256.Sum256([]byte(seed))
	return ed25519.NewKeyFromSeed(sum[:])
}

// PublicKeyHex is key's public half in hex, as ingest -cobo-pubkey takes it.
func PublicKeyHex(key ed25519.PrivateKey) string {
	return hex.EncodeToString(key.Public().(ed25519.PublicKey))
}

// Result is the run's summary, printed as JSON.
type Result struct {
	Sent        int64            `json:"sent"`
	Stored      int64            `json:"stored"`
	Duplicates  int64            `json:"duplicates"`
	Failed      int64            `json:"failed"`
	Codes       map[string]int64 `json:"codes"`
	Seconds     float64          `json:"seconds"`
	PerSecond   float64          `json:"stored_per_second"`
	OfferedRate int              `json:"offered_rate"`
	Concurrency int              `json:"concurrency"`
	P50ms       float64          `json:"p50_ms"`
	P90ms       float64          `json:"p90_ms"`
	P99ms       float64          `json:"p99_ms"`
	MaxMs       float64          `json:"max_ms"`
	// CPUus is this process's user+system CPU per request sent, over the
	// run (presigning excluded): the generator's share of a shared machine.
	CPUus float64 `json:"loadgen_cpu_us_per_request"`
}

// Hint says what to do when the run suggests a setup mistake: every answer
// a 401 means ingest does not trust the generator's key. Empty otherwise.
func (r Result) Hint(pubKeyHex string) string {
	if r.Sent > 0 && r.Codes["401"] == r.Sent {
		return "every answer was 401: ingest does not trust this generator's key; start ingest with -cobo-pubkey " + pubKeyHex + " (bin/loadgen -print-pubkey prints it; a test key, never for production)"
	}
	return ""
}

// Options configures a load run.
type Options struct {
	URL         string
	Key         ed25519.PrivateKey
	N           int
	Duration    time.Duration
	Concurrency int
	Rate        int
	RunID       string
	// Presign builds and signs every request before the clock starts, so
	// that the generator's own signing does not compete with the server
	// for a shared machine's cores. Each Biz-Timestamp is then the moment
	// its request was signed, before the run, which ingest accepts unless
	// -max-skew is shorter than the run. It holds all N bodies in memory (about 1 KiB each).
	Presign bool
}

// signed is one request's body and signature headers.
type signed struct {
	body    []byte
	ts, sig string
}

func sign(o Options, i int) signed {
	b := Body(o.RunID, i)
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	return signed{body: b, ts: ts, sig: cobo.SignWebhook(o.Key, b, ts)}
}

// Body returns a realistic order event; i picks the order and its status
// (even: Pending, odd: Completed of the same order).
func Body(runID string, i int) []byte {
	order := fmt.Sprintf("L%s-%d", runID, i/2)
	status, received, updated := "Pending", "0", 1700000000+i
	if i%2 == 1 {
		status, received = "Completed", "102.000001"
	}
	return fmt.Appendf(nil, `{"event_id":"%s-%d","url":"https://psp.example/webhooks/cobo","created_timestamp":%d,"type":"payment.order.status.updated","data":{"data_type":"PaymentOrder","order_id":%q,"merchant_id":"M1001","psp_order_code":"P-%s","pricing_currency":"USD","pricing_amount":"100.00","fee_amount":"2.00","payable_currency":"ETH_USDT","chain_id":"ETH","payable_amount":"102.00","exchange_rate":"1","receive_address":"0xabc","status":%q,"received_token_amount":%q,"created_timestamp":1700000000,"updated_timestamp":%d,"transactions":[]},"status":"Success"}`,
		runID, i, int64(updated)*1000, order, order, status, received, updated)
}

// Run sends the load and summarises it. Latency is measured from when a
// request was due, so a slow server cannot hide queueing (with -rate).
func Run(ctx context.Context, o Options) (Result, error) {
	var presigned []signed
	if o.Presign {
		presigned = make([]signed, o.N)
		for i := range presigned {
			presigned[i] = sign(o, i)
		}
	}
	cpu0 := ProcessCPU()
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{MaxIdleConns: o.Concurrency, MaxIdleConnsPerHost: o.Concurrency, IdleConnTimeout: time.Minute},
	}
	type job struct {
		i   int
		due time.Time
	}
	jobs := make(chan job, o.Concurrency)
	go func() {
		defer close(jobs)
		var interval time.Duration
		if o.Rate > 0 {
			interval = time.Second / time.Duration(o.Rate)
		}
		start := time.Now()
		for i := 0; i < o.N; i++ {
			due := time.Now()
			if interval > 0 {
				// Absolute due times: a late scheduler catches up instead of
				// silently lowering the offered rate.
				due = start.Add(time.Duration(i) * interval)
				if wait := time.Until(due); wait > 0 {
					select {
					case <-time.After(wait):
					case <-ctx.Done():
						return
					}
				}
			}
			select {
			case jobs <- job{i, due}:
			case <-ctx.Done():
				return
			}
		}
	}()

	var sent, stored, dups, failed atomic.Int64
	var mu sync.Mutex
	codes := map[string]int64{}
	lat := make([][]time.Duration, o.Concurrency)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range o.Concurrency {
		wg.Go(func() {
			for j := range jobs {
				var sr signed
				if presigned != nil {
					sr = presigned[j.i]
				} else {
					sr = sign(o, j.i)
				}
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.URL, bytes.NewReader(sr.body))
				if err != nil {
					failed.Add(1)
					continue
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set(cobo.HeaderTimestamp, sr.ts)
				req.Header.Set(cobo.HeaderSignature, sr.sig)
				sent.Add(1)
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						failed.Add(1)
						mu.Lock()
						codes["error"]++
						mu.Unlock()
					}
					continue
				}
				var out struct{ Status string }
				_ = json.NewDecoder(resp.Body).Decode(&out)
				resp.Body.Close()
				lat[w] = append(lat[w], time.Since(j.due))
				mu.Lock()
				codes[strconv.Itoa(resp.StatusCode)]++
				mu.Unlock()
				switch {
				case resp.StatusCode == http.StatusOK && out.Status == "duplicate":
					dups.Add(1)
				case resp.StatusCode == http.StatusOK:
					stored.Add(1)
				default:
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := ProcessCPU() - cpu0
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()) / 1000
	}
	return Result{
		Sent: sent.Load(), Stored: stored.Load(), Duplicates: dups.Load(), Failed: failed.Load(), Codes: codes,
		Seconds: elapsed.Seconds(), PerSecond: float64(stored.Load()) / elapsed.Seconds(),
		OfferedRate: o.Rate, Concurrency: o.Concurrency,
		P50ms: pct(0.50), P90ms: pct(0.90), P99ms: pct(0.99), MaxMs: pct(1),
		CPUus: float64(cpu.Microseconds()) / float64(max(sent.Load(), 1)),
	}, nil
}

// ProcessCPU returns the user+system CPU time this process has used, or 0
// where the platform does not say.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
