package payer_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/shopspring/decimal"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/sandbox/payer"
)

// received is one delivery as the collector saw it.
type received struct {
	env        cobo.Envelope
	body       []byte
	underscore bool
}

// collector is a webhook endpoint that verifies and parses every delivery
// as ingest would. answer, when set, picks the status for an attempt.
type collector struct {
	t        *testing.T
	verifier *cobo.Verifier
	srv      *httptest.Server
	answer   func(eventID string, attempt int) int

	mu        sync.Mutex
	accepted  []received
	attempts  map[string]int
	badAuth   int
	malformed int
}

func newCollector(t *testing.T, key ed25519.PrivateKey, answer func(string, int) int) *collector {
	t.Helper()
	v, err := cobo.NewVerifier(hex.EncodeToString(key.Public().(ed25519.PublicKey)))
	require.NoError(t, err)
	c := &collector{t: t, verifier: v, answer: answer, attempts: map[string]int{}}
	c.srv = httptest.NewServer(http.HandlerFunc(c.serve))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *collector) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	ts, sig, underscore := r.Header.Get(cobo.HeaderTimestamp), r.Header.Get(cobo.HeaderSignature), false
	if ts == "" && sig == "" {
		ts, sig, underscore = r.Header.Get(cobo.HeaderTimestampAlt), r.Header.Get(cobo.HeaderSignatureAlt), true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.verifier.Verify(body, ts, sig); err != nil {
		c.badAuth++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	env, err := cobo.ParseEnvelope(body)
	if err != nil || r.Header.Get("Content-Type") != "application/json" {
		c.malformed++
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	c.attempts[env.EventID]++
	status := http.StatusOK
	if c.answer != nil {
		status = c.answer(env.EventID, c.attempts[env.EventID])
	}
	if status >= 300 && status < 400 {
		w.Header().Set("Location", "/elsewhere")
	}
	w.WriteHeader(status)
	if status < 300 {
		c.accepted = append(c.accepted, received{env: env, body: body, underscore: underscore})
	}
}

func (c *collector) deliveries() []received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]received(nil), c.accepted...)
}

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return priv
}

var fixedStart = time.Date(2026, 3, 15, 12, 0, 0, 0, time.UTC)

func baseConfig(url string, key ed25519.PrivateKey) payer.Config {
	return payer.Config{
		WebhookURL: url, WebhookKey: key, Orders: 60, Seed: 42,
		Duplicates: 0.3, Shuffle: true, LateRatio: 0.3, Concurrency: 4,
		Start: fixedStart, Logger: zerolog.Nop(),
		BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond,
	}
}

var orderIDPattern = regexp.MustCompile(`^O20260315-M100[123]-\d+$`)

func dec(t *testing.T, a cobo.Amount) decimal.Decimal {
	t.Helper()
	require.True(t, a.Valid, "amount must be set")
	return a.Decimal
}

func maxTwoDecimals(t *testing.T, a *cobo.TokenAmount) {
	t.Helper()
	require.NotNil(t, a)
	require.True(t, a.Amount.Valid)
	require.True(t, a.Amount.Decimal.Equal(a.Amount.Decimal.Truncate(2)), "standard event amount %s has more than 2 decimals", a.Amount.Decimal)
	require.NotEmpty(t, a.TokenID)
	require.NotEmpty(t, a.ChainID)
}

func TestRunDeliversSignedConsistentEvents(t *testing.T) {
	key := newKey(t)
	c := newCollector(t, key, nil)
	sim := cobosim.New(cobosim.Config{Logger: zerolog.Nop()})
	cfg := baseConfig(c.srv.URL, key)
	cfg.Sim = sim
	st, err := payer.Run(context.Background(), cfg)
	require.NoError(t, err)

	got := c.deliveries()
	require.Zero(t, c.badAuth, "every delivery verifies")
	require.Zero(t, c.malformed)
	require.Equal(t, 60, st.Orders)
	require.Equal(t, 60, st.ByStatus["Completed"]+st.ByStatus["Expired"]+st.ByStatus["Underpaid"])
	require.Zero(t, st.Failed)
	require.Zero(t, st.Retried)
	require.Equal(t, len(got), st.Accepted)
	require.Equal(t, len(got), st.Sent)
	require.Equal(t, 60, sim.State().Orders)

	// Resends carry the same event_id and the same bytes.
	byID := map[string][]received{}
	var underscore, hyphen int
	for _, d := range got {
		byID[d.env.EventID] = append(byID[d.env.EventID], d)
		if d.underscore {
			underscore++
		} else {
			hyphen++
		}
	}
	require.Positive(t, underscore, "some deliveries use Biz_Timestamp/Biz_Resp_Signature")
	require.Positive(t, hyphen)
	require.Equal(t, st.Events, len(byID))
	require.Equal(t, st.Duplicates, len(got)-len(byID))
	require.Positive(t, st.Duplicates)
	for id, ds := range byID {
		for _, d := range ds[1:] {
			require.Equal(t, ds[0].body, d.body, "resend of %s differs", id)
		}
	}

	// Group distinct events by order and check each order's story.
	orders := map[string][]cobo.Envelope{}
	for _, ds := range byID {
		orders[ds[0].env.OrderID] = append(orders[ds[0].env.OrderID], ds[0].env)
	}
	require.Len(t, orders, 60)
	statuses := map[string]int{}
	var late, overpaid int
	for orderID, evs := range orders {
		require.Regexp(t, orderIDPattern, orderID)
		var pending, final []cobo.OrderData
		var deposits, lates []cobo.TransactionData
		var updates, notices []cobo.OrderUpdateData
		for _, e := range evs {
			require.Less(t, int64(e.CreatedTimestamp), int64(1e14), "created_timestamp is ms")
			require.Greater(t, int64(e.CreatedTimestamp), int64(1e12))
			switch e.Type {
			case cobo.EventOrderStatusUpdated:
				var o cobo.OrderData
				require.NoError(t, json.Unmarshal(e.Data, &o))
				require.Equal(t, "PaymentOrder", o.DataType)
				require.Less(t, int64(o.UpdatedTimestamp), int64(1e11), "order timestamps are seconds")
				if o.Status == "Pending" {
					pending = append(pending, o)
				} else {
					final = append(final, o)
				}
			case cobo.EventTransactionCompleted, cobo.EventTransactionLate:
				var tx cobo.TransactionData
				require.NoError(t, json.Unmarshal(e.Data, &tx))
				require.Equal(t, "PaymentTransaction", tx.DataType)
				require.Equal(t, "Order", tx.AcquiringType)
				require.Equal(t, orderID, tx.OrderID)
				require.NotEmpty(t, tx.TransactionID)
				require.Greater(t, int64(tx.UpdatedTimestamp), int64(1e12), "transaction timestamps are ms")
				amt := tx.DestinationAmount()
				require.True(t, amt.Valid && amt.Decimal.IsPositive())
				require.True(t, amt.Decimal.GreaterThan(decimal.RequireFromString("0.05")), "no dust is reported")
				if e.Type == cobo.EventTransactionLate {
					lates = append(lates, tx)
				} else {
					deposits = append(deposits, tx)
				}
			case cobo.EventOrderUpdated:
				var u cobo.OrderUpdateData
				require.NoError(t, json.Unmarshal(e.Data, &u))
				require.Equal(t, "PaymentOrderUpdate", u.DataType)
				maxTwoDecimals(t, u.RequestedAmount)
				maxTwoDecimals(t, u.CreditedAmount)
				if u.NoticeType == cobo.NoticeLatePaymentReceived {
					notices = append(notices, u)
				} else {
					updates = append(updates, u)
				}
			default:
				t.Fatalf("unexpected event type %s", e.Type)
			}
		}
		require.Len(t, pending, 1, orderID)
		require.Len(t, final, 1, "exactly one final status for %s", orderID)
		require.Len(t, updates, 1, orderID)
		f := final[0]
		statuses[f.Status]++
		require.Contains(t, []string{"Completed", "Expired", "Underpaid"}, f.Status)
		require.Greater(t, int64(f.UpdatedTimestamp), int64(pending[0].UpdatedTimestamp))
		require.Equal(t, f.Status, updates[0].Status)
		require.Equal(t, f.PayableAmount.Decimal.Truncate(2).String(), updates[0].RequestedAmount.Amount.Decimal.String())

		received := decimal.Zero
		for _, d := range deposits {
			received = received.Add(d.DestinationAmount().Decimal)
		}
		require.True(t, received.Equal(dec(t, f.ReceivedTokenAmount)), "deposits of %s add up to received_token_amount", orderID)
		require.Len(t, f.Transactions, len(deposits))
		require.True(t, updates[0].CreditedAmount.Amount.Decimal.Equal(received.Truncate(2)))
		payable, tolerance := dec(t, f.PayableAmount), dec(t, f.AmountTolerance)
		require.True(t, payable.Equal(dec(t, f.PricingAmount).Add(dec(t, f.FeeAmount))))
		switch f.Status {
		case "Completed":
			require.True(t, received.GreaterThanOrEqual(payable.Sub(tolerance)), "%s completed with %s of %s", orderID, received, payable)
			if received.GreaterThan(payable) {
				overpaid++
			}
		case "Underpaid":
			require.True(t, received.IsPositive() && received.LessThan(payable.Sub(tolerance)))
		case "Expired":
			require.True(t, received.IsZero())
			require.Empty(t, deposits)
		}

		require.Equal(t, len(lates), len(notices), "each late deposit has its notice")
		require.LessOrEqual(t, len(lates), 1)
		if len(lates) == 1 {
			late++
			amount := lates[0].DestinationAmount().Decimal
			require.True(t, amount.IsPositive())
			var lateEntries int
			for _, tx := range notices[0].Transactions {
				if tx.IsLate {
					lateEntries++
					require.Equal(t, lates[0].TransactionID, tx.TransactionID)
					require.True(t, tx.Amount.Amount.Decimal.Equal(amount.Truncate(2)), "notice amount is the late amount truncated")
				}
			}
			require.Equal(t, 1, lateEntries)
			require.Equal(t, f.Status, notices[0].Status, "a late deposit does not change the status")
			require.Greater(t, int64(lates[0].UpdatedTimestamp)/1000, int64(f.UpdatedTimestamp))
		}
	}
	require.Equal(t, st.ByStatus, statuses)
	require.Equal(t, st.Late, late)
	// Seed 42 exercises every outcome.
	require.Positive(t, statuses["Completed"])
	require.Positive(t, statuses["Expired"])
	require.Positive(t, statuses["Underpaid"])
	require.Positive(t, overpaid)
	require.Positive(t, late)
}

// perOrder returns each order's deliveries as event_id and body, in the
// order they were sent (deliveries of one order are sequential).
func perOrder(ds []received) map[string][]string {
	out := map[string][]string{}
	for _, d := range ds {
		out[d.env.OrderID] = append(out[d.env.OrderID], d.env.EventID+" "+string(d.body))
	}
	return out
}

var urlField = regexp.MustCompile(`"url":"[^"]*"`)

// normalise blanks out the envelope's url: collectors' URLs differ.
func normalise(m map[string][]string) map[string][]string {
	out := map[string][]string{}
	for k, v := range m {
		for _, s := range v {
			out[k] = append(out[k], urlField.ReplaceAllString(s, `"url":""`))
		}
	}
	return out
}

func TestRunIsDeterministic(t *testing.T) {
	key := newKey(t)
	run := func(seed uint64, concurrency int) map[string][]string {
		t.Helper()
		c := newCollector(t, key, nil)
		cfg := baseConfig(c.srv.URL, key)
		cfg.Orders, cfg.Seed, cfg.Concurrency = 20, seed, concurrency
		_, err := payer.Run(context.Background(), cfg)
		require.NoError(t, err)
		return perOrder(c.deliveries())
	}
	a, b := normalise(run(7, 1)), normalise(run(7, 5))
	require.Len(t, a, 20)
	require.Equal(t, a, b)

	other := normalise(run(8, 3))
	for id := range other {
		_, clash := a[id]
		require.False(t, clash, "another seed gives other order ids")
	}
}

func TestRetriesAreBounded(t *testing.T) {
	t.Run("transient failures are retried until accepted", func(t *testing.T) {
		key := newKey(t)
		c := newCollector(t, key, func(_ string, attempt int) int {
			if attempt <= 2 {
				return http.StatusServiceUnavailable
			}
			return http.StatusOK
		})
		cfg := baseConfig(c.srv.URL, key)
		cfg.Orders, cfg.Duplicates = 5, 0
		st, err := payer.Run(context.Background(), cfg)
		require.NoError(t, err)
		require.Zero(t, st.Failed)
		require.Equal(t, st.Events, st.Accepted)
		require.Equal(t, 2*st.Events, st.Retried)
		require.Equal(t, 3*st.Events, st.Sent)
		require.Len(t, c.deliveries(), st.Events)
	})
	for _, status := range []int{http.StatusInternalServerError, http.StatusFound, http.StatusBadRequest} {
		t.Run("always "+http.StatusText(status)+" gives up after MaxAttempts", func(t *testing.T) {
			key := newKey(t)
			c := newCollector(t, key, func(string, int) int { return status })
			cfg := baseConfig(c.srv.URL, key)
			cfg.Orders, cfg.Duplicates, cfg.LateRatio, cfg.MaxAttempts = 2, 0, 0, 3
			st, err := payer.Run(context.Background(), cfg)
			require.NoError(t, err, "abandoned deliveries are counted, not returned")
			require.Equal(t, 2, st.Orders)
			require.Equal(t, st.Events, st.Failed)
			require.Zero(t, st.Accepted)
			require.Equal(t, 3*st.Events, st.Sent)
			c.mu.Lock()
			defer c.mu.Unlock()
			require.Len(t, c.attempts, st.Events)
			for id, n := range c.attempts {
				require.Equal(t, 3, n, "event %s", id)
			}
		})
	}
	t.Run("unreachable endpoint", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		cfg := baseConfig(url, newKey(t))
		cfg.Orders, cfg.Duplicates, cfg.LateRatio, cfg.MaxAttempts = 1, 0, 0, 2
		st, err := payer.Run(context.Background(), cfg)
		require.NoError(t, err)
		require.Equal(t, st.Events, st.Failed)
		require.Equal(t, 2*st.Events, st.Sent)
	})
}

func TestRunStopsWithContext(t *testing.T) {
	key := newKey(t)
	c := newCollector(t, key, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	st, err := payer.Run(ctx, baseConfig(c.srv.URL, key))
	require.ErrorIs(t, err, context.Canceled)
	require.Less(t, st.Orders, 60)
}

func TestConfigValidation(t *testing.T) {
	key := newKey(t)
	for name, mutate := range map[string]func(*payer.Config){
		"relative url":     func(c *payer.Config) { c.WebhookURL = "/webhooks" },
		"no key":           func(c *payer.Config) { c.WebhookKey = nil },
		"negative orders":  func(c *payer.Config) { c.Orders = -1 },
		"negative foreign": func(c *payer.Config) { c.ForeignOrders = -1 },
		"duplicates > 1":   func(c *payer.Config) { c.Duplicates = 1.5 },
		"late ratio < 0":   func(c *payer.Config) { c.LateRatio = -0.1 },
		"negative rate":    func(c *payer.Config) { c.Rate = -1 },
		"empty merchant":   func(c *payer.Config) { c.Merchants = []string{"M1", ""} },
		"bad concurrency":  func(c *payer.Config) { c.Concurrency = -2 },
		"bad max attempts": func(c *payer.Config) { c.MaxAttempts = -1 },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := baseConfig("http://127.0.0.1:1/webhooks/cobo", key)
			mutate(&cfg)
			_, err := payer.Run(context.Background(), cfg)
			require.ErrorContains(t, err, "payer config")
		})
	}
}

// TestLogsHoldNoSecrets runs with debug logging and failing deliveries and
// checks that neither the private key nor a signature reaches the log.
func TestLogsHoldNoSecrets(t *testing.T) {
	key := newKey(t)
	var sigs []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		sigs = append(sigs, r.Header.Get(cobo.HeaderSignature)+r.Header.Get(cobo.HeaderSignatureAlt))
		mu.Unlock()
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	var logs bytes.Buffer
	cfg := baseConfig(srv.URL, key)
	cfg.Orders, cfg.MaxAttempts, cfg.Concurrency = 2, 2, 1
	cfg.Logger = zerolog.New(&logs).Level(zerolog.DebugLevel)
	_, err := payer.Run(context.Background(), cfg)
	require.NoError(t, err)
	out := logs.String()
	require.Contains(t, out, "delivery abandoned")
	require.NotContains(t, out, hex.EncodeToString(key.Seed()))
	require.NotContains(t, out, hex.EncodeToString(key))
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, sigs)
	for _, s := range sigs {
		require.NotContains(t, out, s)
		require.False(t, strings.TrimSpace(s) == "")
	}
}
