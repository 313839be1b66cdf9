package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/paystream/paystream/internal/domain"
	"github.com/paystream/paystream/internal/httpapi"
)

// maxBody bounds a JSON request body (a redrive of MaxRedrive sequences).
const maxBody = 64 << 10

// routes returns the console's handler:
//
//   - open: /healthz, /readyz, the page shell (/, /orders, /orders/{id},
//     /dead-letters, /attention), which holds no data, and /static/;
//   - behind the token: the page fragments under /ui/ and the JSON admin
//     API under /api/v1/.
func (c *Console) routes() http.Handler {
	open := http.NewServeMux()
	open.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	open.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !c.index.Ready() || !c.nc.IsConnected() {
			httpapi.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": "loading the orders index, or NATS unreachable"})
			return
		}
		httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	open.Handle("GET /static/", staticHandler())
	for _, p := range []string{"GET /{$}", "GET /orders", "GET /orders/{id}", "GET /dead-letters", "GET /attention"} {
		open.HandleFunc(p, serveShell)
	}

	auth := http.NewServeMux()
	auth.HandleFunc("GET /api/v1/overview", c.apiOverview)
	auth.HandleFunc("GET /api/v1/orders", c.apiOrders)
	auth.HandleFunc("GET /api/v1/orders/{id}", c.apiOrder)
	auth.HandleFunc("GET /api/v1/orders/{id}/events", c.apiTimeline)
	auth.HandleFunc("POST /api/v1/orders/{id}/replay", c.apiReapply)
	auth.HandleFunc("GET /api/v1/dead-letters", c.apiDeadLetters)
	auth.HandleFunc("POST /api/v1/dead-letters/{seq}/redrive", c.apiRedriveOne)
	auth.HandleFunc("POST /api/v1/dead-letters/redrive", c.apiRedrive)
	auth.HandleFunc("GET /api/v1/events/{seq}/outcome", c.apiOutcome)
	auth.HandleFunc("GET /api/v1/attention", c.apiAttention)
	auth.HandleFunc("GET /ui/overview", c.uiOverview)
	auth.HandleFunc("GET /ui/orders", c.uiOrders)
	auth.HandleFunc("GET /ui/orders/{id}", c.uiOrder)
	auth.HandleFunc("GET /ui/dead-letters", c.uiDeadLetters)
	auth.HandleFunc("GET /ui/attention", c.uiAttention)
	auth.HandleFunc("/", notFound)
	protected := httpapi.RequireToken(c.cfg.Token, nil, auth)
	open.Handle("/api/", protected)
	open.Handle("/ui/", protected)
	open.HandleFunc("/", notFound)
	return secureHeaders(open)
}

func notFound(w http.ResponseWriter, req *http.Request) {
	httpapi.WriteError(w, fmt.Errorf("no route %s %s: %w", req.Method, req.URL.Path, domain.ErrNotFound))
}

// secureHeaders sets what every answer carries: no script, style or
// frame from anywhere but the console itself, no sniffing, no referrer,
// and nothing cached but the static files.
func secureHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, req)
	})
}

// requestCtx bounds the NATS work of one request.
func (c *Console) requestCtx(req *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(req.Context(), c.cfg.RequestTimeout)
}

// Overview is the overview page's data.
type Overview struct {
	Sampled
	Orders IndexStats `json:"orders"`
	// DeadLettersByKind counts dead letters by reason kind.
	DeadLettersByKind map[string]int `json:"dead_letters_by_kind"`
	// OperatorErrors are the last errors an operator must act on, newest
	// first: failed and stuck allocation items, untrusted and
	// unknown-order dead letters.
	OperatorErrors []OperatorError `json:"operator_errors"`
}

// OperatorError is one of the overview's errors.
type OperatorError struct {
	At time.Time `json:"at"`
	// Kind is failed_allocation, stuck_allocation, or a dead-letter kind
	// (untrusted, unknown_order).
	Kind    string `json:"kind"`
	OrderID string `json:"order_id,omitempty"`
	ItemID  string `json:"item_id,omitempty"`
	DLQSeq  uint64 `json:"dlq_seq,omitempty"`
	Type    string `json:"type,omitempty"`
	Reason  string `json:"reason"`
}

// maxOperatorErrors is how many errors the overview lists.
const maxOperatorErrors = 20

func (c *Console) overview(ctx context.Context) Overview {
	ov := Overview{Sampled: c.stats.latest(), Orders: c.index.Stats(), DeadLettersByKind: map[string]int{}, OperatorErrors: []OperatorError{}}
	items, _ := c.index.Attention(maxOperatorErrors)
	for _, it := range items {
		e := OperatorError{At: it.OrderChangedAt, Kind: "failed_allocation", OrderID: it.OrderID, ItemID: it.ID, Reason: it.Reason}
		if it.Stuck() {
			e.At, e.Kind = *it.StuckSince, "stuck_allocation"
			e.Reason = fmt.Sprintf("%s since %s at %s (request_id %s)", it.Status, it.StuckSince.UTC().Format(time.RFC3339), it.Backend, it.RequestID)
		}
		ov.OperatorErrors = append(ov.OperatorErrors, e)
	}
	// The cached list itself, newest last: the overview copies no dead
	// letter but the few it shows.
	dls, err := c.dlq.list(ctx)
	if err != nil {
		if ov.Errors == nil {
			ov.Errors = map[string]string{}
		}
		ov.Errors["dead_letters"] = err.Error()
	}
	n := 0
	for i := len(dls) - 1; i >= 0; i-- {
		d := &dls[i]
		ov.DeadLettersByKind[d.Kind()]++
		if n < maxOperatorErrors && slices.Contains(operatorKinds, d.Kind()) {
			ov.OperatorErrors = append(ov.OperatorErrors, OperatorError{At: d.DeadLetteredAt, Kind: d.Kind(), OrderID: d.OrderID, DLQSeq: d.DLQSeq, Type: d.Type, Reason: d.Reason})
			n++
		}
	}
	sort.SliceStable(ov.OperatorErrors, func(i, j int) bool { return ov.OperatorErrors[i].At.After(ov.OperatorErrors[j].At) })
	ov.OperatorErrors = ov.OperatorErrors[:min(len(ov.OperatorErrors), maxOperatorErrors)]
	return ov
}

func (c *Console) apiOverview(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := c.requestCtx(req)
	defer cancel()
	httpapi.WriteJSON(w, http.StatusOK, c.overview(ctx))
}

// parseQuery reads the orders list's filters: status, merchant, before
// (a cursor) and limit.
func parseQuery(req *http.Request) (Query, error) {
	v := req.URL.Query()
	q := Query{Status: v.Get("status"), Merchant: v.Get("merchant")}
	var err error
	if s := v.Get("before"); s != "" {
		if q.Before, err = strconv.ParseUint(s, 10, 64); err != nil {
			return q, fmt.Errorf("%w: before: want a revision, got %q", domain.ErrInvalid, s)
		}
	}
	if s := v.Get("limit"); s != "" {
		if q.Limit, err = strconv.Atoi(s); err != nil || q.Limit < 1 || q.Limit > MaxPageSize {
			return q, fmt.Errorf("%w: limit: want 1 to %d, got %q", domain.ErrInvalid, MaxPageSize, s)
		}
	}
	return q, nil
}

func (c *Console) apiOrders(w http.ResponseWriter, req *http.Request) {
	q, err := parseQuery(req)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, c.index.Page(q))
}

func (c *Console) apiOrder(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := c.requestCtx(req)
	defer cancel()
	d, err := c.order(ctx, req.PathValue("id"))
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, d)
}

func (c *Console) apiTimeline(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := c.requestCtx(req)
	defer cancel()
	tl, err := c.timeline(ctx, req.PathValue("id"))
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if tl == nil {
		tl = []TimelineEvent{}
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"order_id": req.PathValue("id"), "events": tl})
}

func (c *Console) apiReapply(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := c.requestCtx(req)
	defer cancel()
	res, err := c.reapply(ctx, req.PathValue("id"))
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, res)
}

func deadLetterFilter(req *http.Request) DeadLetterFilter {
	v := req.URL.Query()
	return DeadLetterFilter{Kind: v.Get("reason"), Type: v.Get("type"), OrderID: v.Get("order")}
}

func (c *Console) apiDeadLetters(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := c.requestCtx(req)
	defer cancel()
	l, err := c.deadLetters(ctx, deadLetterFilter(req))
	if err != nil {
		httpapi.WriteError(w, fmt.Errorf("dead letters %w: %v", httpapi.ErrUnavailable, err))
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, l)
}

// RedriveRequest is the body of POST /api/v1/dead-letters/redrive.
type RedriveRequest struct {
	// Seqs are the dead letters' dlq_seq, at most MaxRedrive.
	Seqs []uint64 `json:"seqs"`
}

// RedriveResponse is the answer of both redrive calls.
type RedriveResponse struct {
	Results []RedriveResult `json:"results"`
	// Redriven and Failed count the results.
	Redriven int `json:"redriven"`
	Failed   int `json:"failed"`
}

func (c *Console) answerRedrive(w http.ResponseWriter, req *http.Request, seqs []uint64) {
	ctx, cancel := c.requestCtx(req)
	defer cancel()
	resp := RedriveResponse{Results: c.redrive(ctx, seqs)}
	for _, r := range resp.Results {
		if r.Error == "" {
			resp.Redriven++
		} else {
			resp.Failed++
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, resp)
}

func (c *Console) apiRedriveOne(w http.ResponseWriter, req *http.Request) {
	seq, err := strconv.ParseUint(req.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		httpapi.WriteError(w, fmt.Errorf("%w: dead letter sequence %q", domain.ErrInvalid, req.PathValue("seq")))
		return
	}
	c.answerRedrive(w, req, []uint64{seq})
}

func (c *Console) apiRedrive(w http.ResponseWriter, req *http.Request) {
	var body RedriveRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, req.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			httpapi.WriteError(w, fmt.Errorf("%w: at most %d bytes", httpapi.ErrTooLarge, maxBody))
			return
		}
		httpapi.WriteError(w, fmt.Errorf("%w: body: want {\"seqs\":[…]}: %v", domain.ErrInvalid, err))
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		httpapi.WriteError(w, fmt.Errorf("%w: body: one JSON object only", domain.ErrInvalid))
		return
	}
	switch {
	case len(body.Seqs) == 0:
		httpapi.WriteError(w, fmt.Errorf("%w: seqs: give the dlq_seq of at least one dead letter", domain.ErrInvalid))
		return
	case len(body.Seqs) > MaxRedrive:
		httpapi.WriteError(w, fmt.Errorf("%w: seqs: at most %d at once, got %d", domain.ErrInvalid, MaxRedrive, len(body.Seqs)))
		return
	case slices.Contains(body.Seqs, 0):
		httpapi.WriteError(w, fmt.Errorf("%w: seqs: 0 is no dead letter", domain.ErrInvalid))
		return
	}
	c.answerRedrive(w, req, body.Seqs)
}

func (c *Console) apiOutcome(w http.ResponseWriter, req *http.Request) {
	seq, err := strconv.ParseUint(req.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		httpapi.WriteError(w, fmt.Errorf("%w: event sequence %q", domain.ErrInvalid, req.PathValue("seq")))
		return
	}
	ctx, cancel := c.requestCtx(req)
	defer cancel()
	o, err := c.outcome(ctx, seq)
	if err != nil {
		httpapi.WriteError(w, fmt.Errorf("event outcome %w: %v", httpapi.ErrUnavailable, err))
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, o)
}

// maxAttention bounds the items the attention page and call list.
const maxAttention = 500

func (c *Console) apiAttention(w http.ResponseWriter, _ *http.Request) {
	items, orders := c.index.Attention(maxAttention)
	if items == nil {
		items = []AttentionItem{}
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"items": items, "orders": orders})
}
