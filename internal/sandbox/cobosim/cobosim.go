// Package cobosim simulates the parts of Cobo's payments API that paystream
// calls (batch allocations and pay-in orders), on loopback, for demos and
// tests. It authenticates requests exactly as Cobo documents (Ed25519 over
// METHOD|PATH|NONCE|QUERY|BODY), keeps all state in memory, and can inject
// faults (errors, lost responses, timeouts, slowness, rate limits) so that a
// client's retry and idempotency logic can be checked for exactly-once
// effects. It is not a security boundary: its operator endpoints under
// /sandbox/ need no authentication, so serve it on loopback only.
package cobosim

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/sandbox/orderref"
)

// DefaultDuplicateCode is the error_code answered for a reused request_id
// when Config.DuplicateCode is zero. Cobo does not document which code it
// uses; cobo.APIError.DuplicateRequest accepts 12009, 2040 and 30001.
const DefaultDuplicateCode = 12009

// DuplicateRequestMessage is the error_message answered for a reused
// request_id.
const DuplicateRequestMessage = "The request_id has already been used"

// Cobo error codes the simulator answers with.
const (
	CodeInternal         = 1000
	CodeMissingParameter = 2003
	CodeInvalidParameter = 2006
	CodeRateLimited      = 2010
	CodeNoSuchEndpoint   = 2021
	CodeMissingHeaders   = 2022
	CodeBadSignature     = 2023
	CodeUnknownAPIKey    = 2024
	CodeNotFound         = 2028
	CodeAlreadyExists    = 2040
	// CodePricingPlan is 30001, which Cobo's payments error list gives for
	// "pricing plan does not support this feature" and its WaaS list for
	// "request_id already used" (see FaultPricingPlan).
	CodePricingPlan   = 30001
	CodeInvalidAmount = 30007
)

// PricingPlanMessage is the error_message of FaultPricingPlan.
const PricingPlanMessage = "The pricing plan does not support this feature"

// Response shapes of the batch allocation endpoints (Config.Shape).
const (
	// ShapeCurrent answers as Cobo's current API: status on batches
	// (BatchAllocationStatus) and on allocation items, added in SDK v1.39.
	ShapeCurrent = "current"
	// ShapeSeed answers exactly as the reference seeds (create, get by id)
	// show: no status field on batches or items, as before v1.39.
	ShapeSeed = "seed"
)

// ParseShape accepts "current" (or empty) and "seed".
func ParseShape(s string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", ShapeCurrent:
		return ShapeCurrent, nil
	case ShapeSeed:
		return ShapeSeed, nil
	}
	return "", fmt.Errorf("unknown response shape %q: want current or seed", s)
}

// maxBody bounds a request body; Cobo's own limit is not documented.
const maxBody = 1 << 20

// Config configures a Sim.
type Config struct {
	// APIKeys are the hex Ed25519 public keys accepted as Biz-Api-Key.
	// With none, every /v2 request is answered 401 code 2024.
	APIKeys []string
	// DuplicateCode is the error_code for a reused request_id;
	// DefaultDuplicateCode when zero.
	DuplicateCode int
	// Shape is ShapeCurrent (the default when empty) or ShapeSeed: the
	// batch allocation endpoints then answer without any status field.
	// Items are kept with their status either way (Batches, Items).
	Shape string
	// Logger receives one line per recorded batch or order (info) and per
	// request (debug). It never logs signatures.
	Logger zerolog.Logger
}

// Sim is an in-memory Cobo payments API. It implements http.Handler, serving
// Cobo's routes under /v2 and operator routes under /sandbox/, so mount it
// at the server root. It is safe for concurrent use.
type Sim struct {
	cfg  Config
	keys map[string]bool
	api  *http.ServeMux
	ops  *http.ServeMux

	mu       sync.Mutex
	batches  []*cobo.BatchAllocation // creation order, with params and items
	byID     map[string]*cobo.BatchAllocation
	byReq    map[string]*cobo.BatchAllocation
	orders   map[string]cobo.OrderData
	orderIDs []string // creation order
	pspCodes map[string]string
	// itemStatus is the status new items to a destination get
	// (SetItemStatus); Completed for any other destination.
	itemStatus map[string]string
	faults     []Fault
	stats      counters

	// foreign are the orders of another Cobo customer the payer sent
	// webhooks for (RecordForeignOrder), never in orders; foreignIDs
	// holds them in recording order.
	foreign    orderref.Set
	foreignIDs []string
}

type counters struct {
	requests, authFailures, duplicates, faultsApplied int
	// foreignLookups counts GET /v2/payments/orders/{id} of foreign orders.
	foreignLookups int
}

// New returns a Sim. Keys that are not 32-byte hex are kept but can never
// verify, so a typo shows up as 401 code 2024 or 2023.
func New(cfg Config) *Sim {
	if cfg.DuplicateCode == 0 {
		cfg.DuplicateCode = DefaultDuplicateCode
	}
	s := &Sim{
		cfg:        cfg,
		keys:       map[string]bool{},
		api:        http.NewServeMux(),
		ops:        http.NewServeMux(),
		byID:       map[string]*cobo.BatchAllocation{},
		byReq:      map[string]*cobo.BatchAllocation{},
		orders:     map[string]cobo.OrderData{},
		pspCodes:   map[string]string{},
		foreign:    orderref.Set{},
		itemStatus: map[string]string{},
	}
	for _, k := range cfg.APIKeys {
		// Hex is case-insensitive; compare in one case.
		s.keys[strings.ToLower(strings.TrimSpace(k))] = true
	}
	s.api.HandleFunc("POST /v2/payments/batch_allocations", s.createBatch)
	s.api.HandleFunc("GET /v2/payments/batch_allocations", s.listBatches)
	s.api.HandleFunc("GET /v2/payments/batch_allocations/{id}", s.getBatch)
	s.api.HandleFunc("GET /v2/payments/allocation_items", s.listItems)
	s.api.HandleFunc("POST /v2/payments/orders", s.createOrder)
	s.api.HandleFunc("GET /v2/payments/orders/{order_id}", s.getOrder)
	s.api.HandleFunc("GET /v2/payments/orders", s.listOrders)
	s.ops.HandleFunc("POST /sandbox/faults", s.postFault)
	s.ops.HandleFunc("DELETE /sandbox/faults", s.deleteFaults)
	s.ops.HandleFunc("GET /sandbox/state", s.getState)
	return s
}

// ServeHTTP implements http.Handler.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/sandbox/"):
		if _, pattern := s.ops.Handler(r); pattern == "" {
			writeError(w, http.StatusNotFound, CodeNoSuchEndpoint, "No such sandbox endpoint")
			return
		}
		s.ops.ServeHTTP(w, r)
	case r.URL.Path == "/v2" || strings.HasPrefix(r.URL.Path, "/v2/"):
		s.serveAPI(w, r)
	default:
		writeError(w, http.StatusNotFound, CodeNoSuchEndpoint, "Endpoint not implemented or wrong path")
	}
}

// serveAPI authenticates, applies a queued fault, and routes a /v2 request.
func (s *Sim) serveAPI(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.stats.requests++
	s.mu.Unlock()
	rec := &statusRecorder{ResponseWriter: w}
	w = rec
	defer func() {
		s.cfg.Logger.Debug().Str("method", r.Method).Str("path", r.URL.Path).Int("status", rec.status).Msg("cobo api request")
	}()

	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidParameter, "Could not read the request body")
		return
	}
	if len(body) > maxBody {
		writeError(w, http.StatusRequestEntityTooLarge, CodeInvalidParameter, "Request body too large")
		return
	}
	if status, code, msg := s.authenticate(r, body); code != 0 {
		s.mu.Lock()
		s.stats.authFailures++
		s.mu.Unlock()
		writeError(w, status, code, msg)
		return
	}
	if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		// Cobo answers 406 to bodies not declared as JSON.
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mt != "application/json" {
			writeError(w, http.StatusNotAcceptable, CodeInvalidParameter, "Ensure the request content format is JSON")
			return
		}
	}
	if _, pattern := s.api.Handler(r); pattern == "" {
		writeError(w, http.StatusNotFound, CodeNoSuchEndpoint, "Endpoint not implemented or wrong path")
		return
	}
	// Handlers read the body again from memory.
	r.Body = io.NopCloser(bytes.NewReader(body))

	f, ok := s.takeFault(r.Method, r.URL.Path)
	if !ok {
		s.api.ServeHTTP(w, r)
		return
	}
	log := s.cfg.Logger.Info().Str("fault", string(f.Kind)).Str("method", r.Method).Str("path", r.URL.Path)
	switch f.Kind {
	case FaultError500:
		log.Msg("fault: 500 without processing")
		writeError(w, http.StatusInternalServerError, CodeInternal, "Internal error, please retry")
	case FaultRateLimit:
		log.Msg("fault: 429 without processing")
		writeError(w, http.StatusTooManyRequests, CodeRateLimited, "Rate limit exceeded")
	case FaultUnauthorized:
		log.Msg("fault: 401 without processing")
		writeError(w, http.StatusUnauthorized, CodeBadSignature, "Missing or invalid API signature")
	case FaultPricingPlan:
		if s.storedRequest(body) {
			log.Msg("fault: request_id stored already, answered as usual")
			s.api.ServeHTTP(w, r)
			return
		}
		log.Msg("fault: 30001 without processing")
		writeError(w, http.StatusBadRequest, CodePricingPlan, PricingPlanMessage)
	case FaultLoseResponse:
		log.Msg("fault: processed, response lost (502)")
		// The real answer is computed, so state changes, and then dropped.
		s.api.ServeHTTP(newBufferedResponse(), r)
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n")
	case FaultTimeout:
		delay := orDefault(f.Delay, DefaultTimeoutDelay)
		log.Dur("delay", delay).Msg("fault: processed, answer held back")
		buf := newBufferedResponse()
		s.api.ServeHTTP(buf, r)
		// Stop waiting when the client gives up, so that shutdown and tests
		// are not held up by a sleeping handler.
		if sleep(r, delay) {
			buf.flushTo(w)
		}
	case FaultSlow:
		delay := orDefault(f.Delay, DefaultSlowDelay)
		log.Dur("delay", delay).Msg("fault: slow answer")
		// A request that reached the server is processed even if the client
		// stopped waiting, as a real server would.
		sleep(r, delay)
		s.api.ServeHTTP(w, r)
	default:
		s.api.ServeHTTP(w, r)
	}
}

// storedRequest reports whether body is a JSON object naming a request_id
// the simulator has recorded a batch for.
func (s *Sim) storedRequest(body []byte) bool {
	var in struct {
		RequestID string `json:"request_id"`
	}
	if json.Unmarshal(body, &in) != nil || in.RequestID == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.byReq[in.RequestID]
	return ok
}

// sleep waits d or until the client goes away; it reports whether the
// full delay elapsed.
func sleep(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// authenticate checks the three Biz-Api headers and the signature. It
// returns code 0 when the request is authentic.
func (s *Sim) authenticate(r *http.Request, body []byte) (status, code int, msg string) {
	key := r.Header.Get(cobo.HeaderAPIKey)
	nonce := r.Header.Get(cobo.HeaderAPINonce)
	sig := r.Header.Get(cobo.HeaderAPISignature)
	if key == "" || nonce == "" || sig == "" {
		return http.StatusUnauthorized, CodeMissingHeaders, "Missing required headers: Biz-Api-Key, Biz-Api-Nonce and Biz-Api-Signature"
	}
	if !s.keys[strings.ToLower(key)] {
		return http.StatusUnauthorized, CodeUnknownAPIKey, "API key authentication failed"
	}
	// Cobo signs the path including /v2 and the query exactly as sent. The
	// SDK signs the decoded path and paystream's client the escaped one;
	// they differ only for ids with reserved characters, so both are
	// accepted rather than guessing which one Cobo uses.
	err := cobo.VerifyAPIRequest(key, sig, r.Method, r.URL.Path, nonce, r.URL.RawQuery, body)
	if err != nil && r.URL.EscapedPath() != r.URL.Path {
		err = cobo.VerifyAPIRequest(key, sig, r.Method, r.URL.EscapedPath(), nonce, r.URL.RawQuery, body)
	}
	if err != nil {
		return http.StatusUnauthorized, CodeBadSignature, "Missing or invalid API signature"
	}
	return 0, 0, ""
}

// takeFault consumes one use of the first queued fault matching the request.
func (s *Sim) takeFault(method, path string) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.faults {
		f := &s.faults[i]
		if !f.matches(method, path) {
			continue
		}
		out := *f
		if f.Count--; f.Count <= 0 {
			s.faults = slices.Delete(s.faults, i, i+1)
		}
		s.stats.faultsApplied++
		return out, true
	}
	return Fault{}, false
}

// InjectFault queues f; it affects the next f.Count matching requests
// (one when Count is zero or less).
func (s *Sim) InjectFault(f Fault) {
	if f.Count < 1 {
		f.Count = 1
	}
	s.mu.Lock()
	s.faults = append(s.faults, f)
	s.mu.Unlock()
}

// ClearFaults drops every queued fault.
func (s *Sim) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

// SetItemFailure makes allocation items created from now on whose
// destination_account equals destinationAccount end in status Failed. A
// batch whose items all fail is Failed; one with some failed items is
// PartiallyCompleted.
func (s *Sim) SetItemFailure(destinationAccount string) {
	s.SetItemStatus(destinationAccount, cobo.ItemFailed)
}

// SetItemStatus makes allocation items created from now on whose
// destination_account equals destinationAccount get status (Pending,
// Transferring, Completed, Failed, or any other word, which a client must
// survive); an empty status restores Completed. The batch's status follows
// its items (see batchStatus).
func (s *Sim) SetItemStatus(destinationAccount, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == "" {
		delete(s.itemStatus, destinationAccount)
		return
	}
	s.itemStatus[destinationAccount] = status
}

// SettleItems moves every recorded item whose destination_account equals
// destinationAccount to status, as an on-chain transfer finishing would,
// and updates their batches' statuses. It returns how many items changed.
func (s *Sim) SettleItems(destinationAccount, status string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, b := range s.batches {
		changed := false
		for i := range b.AllocationItems {
			it := &b.AllocationItems[i]
			if it.DestinationAccount == destinationAccount && it.Status != status {
				it.Status, changed = status, true
				n++
			}
		}
		if changed {
			b.Status = batchStatus(b.AllocationItems)
			b.UpdatedTimestamp = cobo.Int64(time.Now().Unix())
		}
	}
	return n
}

// batchStatus derives a BatchAllocationStatus from its items: Completed or
// Failed when all are, Processing while any is neither Completed nor
// Failed, PartiallyCompleted otherwise.
func batchStatus(items []cobo.AllocationItem) string {
	completed, failed := 0, 0
	for _, it := range items {
		switch it.Status {
		case cobo.ItemCompleted:
			completed++
		case cobo.ItemFailed:
			failed++
		}
	}
	switch {
	case completed == len(items):
		return cobo.BatchCompleted
	case failed == len(items):
		return cobo.BatchFailed
	case completed+failed < len(items):
		return cobo.BatchProcessing
	default:
		return cobo.BatchPartiallyCompleted
	}
}

// PutOrder registers or replaces an order so that GET /v2/payments/orders/
// {order_id} returns it. The payer simulator calls it for each order.
func (s *Sim) PutOrder(o cobo.OrderData) {
	o.DataType = "" // the API's Order has no data_type; webhooks add it.
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.orders[o.OrderID]; !ok {
		s.orderIDs = append(s.orderIDs, o.OrderID)
	}
	s.orders[o.OrderID] = o
	if o.PSPOrderCode != "" {
		s.pspCodes[o.PSPOrderCode] = o.OrderID
	}
}

// RecordForeignOrder notes that the sandbox sent (or is about to send)
// webhooks for orderID as an order of another Cobo customer: Cobo signs
// every customer's webhooks with the same key, so they verify, but the
// order is not ours. Recording changes nothing the API answers: the order
// is never registered, so GET /v2/payments/orders/{order_id} answers it 404
// code 2028 as any unknown order, it is not counted in State.Orders, and
// the simulator allocates nothing for it. It only makes the order known to
// tests (ForeignOrderIDs, ForeignOrderItems, State). Recording an id twice
// records it once. The payer calls it before an order's first webhook.
func (s *Sim) RecordForeignOrder(orderID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.foreign[orderID]; ok || orderID == "" {
		return
	}
	s.foreign[orderID] = struct{}{}
	s.foreignIDs = append(s.foreignIDs, orderID)
}

// ForeignOrderIDs returns the ids RecordForeignOrder recorded, in the
// order they were recorded.
func (s *Sim) ForeignOrderIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.foreignIDs)
}

// ItemsNaming returns the allocation items recorded (in creation order)
// whose description names one of orderIDs as a whole token (see
// orderref.Set.Named). paystream puts the order id in every description,
// so an item made for an order names it.
func (s *Sim) ItemsNaming(orderIDs ...string) []cobo.AllocationItem {
	return s.itemsNaming(orderref.NewSet(orderIDs...))
}

// ForeignOrderItems returns the allocation items whose description names
// a recorded foreign order: allocations a client made for an order that
// is not its own. A client that checks orders with the API makes none.
func (s *Sim) ForeignOrderItems() []cobo.AllocationItem {
	s.mu.Lock()
	set := maps.Clone(s.foreign)
	s.mu.Unlock()
	return s.itemsNaming(set)
}

func (s *Sim) itemsNaming(set orderref.Set) []cobo.AllocationItem {
	var out []cobo.AllocationItem
	for _, it := range s.Items() {
		if _, ok := set.Named(it.Description); ok {
			out = append(out, it)
		}
	}
	return out
}

// Batches returns a copy of every batch recorded, in creation order, with
// both allocation_params and allocation_items filled in. Each successful
// create (including one whose response a fault lost) adds exactly one.
func (s *Sim) Batches() []cobo.BatchAllocation {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]cobo.BatchAllocation, 0, len(s.batches))
	for _, b := range s.batches {
		out = append(out, cloneBatch(b))
	}
	return out
}

// Items returns a copy of every allocation item recorded, in creation order.
func (s *Sim) Items() []cobo.AllocationItem {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []cobo.AllocationItem
	for _, b := range s.batches {
		out = append(out, b.AllocationItems...)
	}
	return out
}

// State is a summary of the simulator, served at GET /sandbox/state.
type State struct {
	Batches           int     `json:"batches"`
	Items             int     `json:"items"`
	Orders            int     `json:"orders"`
	Requests          int     `json:"requests"`
	AuthFailures      int     `json:"auth_failures"`
	DuplicateRequests int     `json:"duplicate_requests"`
	FaultsApplied     int     `json:"faults_applied"`
	PendingFaults     []Fault `json:"pending_faults"`
	// ForeignOrders is how many foreign orders were recorded
	// (RecordForeignOrder); they are not in Orders.
	ForeignOrders int `json:"foreign_orders"`
	// ForeignOrderIDs are their ids, in the order recorded; never null.
	ForeignOrderIDs []string `json:"foreign_order_ids"`
	// ForeignOrderLookups counts GET /v2/payments/orders/{order_id}
	// requests for a foreign order that reached the order handler
	// (authenticated, not cut short by a 500 or 429 fault), each answered
	// 404: how often a client checked one with Cobo.
	ForeignOrderLookups int `json:"foreign_order_lookups"`
	// ForeignOrderItems counts allocation items whose description names a
	// foreign order (see Sim.ForeignOrderItems); 0 when every client
	// refused to allocate for orders that are not its own.
	ForeignOrderItems int `json:"foreign_order_items"`
}

// State returns counts of recorded objects, /v2 requests (authentication
// failures and duplicate request_ids among them), the queued faults, and
// the foreign orders with the lookups and items that name them.
func (s *Sim) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := State{
		Batches:           len(s.batches),
		Orders:            len(s.orders),
		Requests:          s.stats.requests,
		AuthFailures:      s.stats.authFailures,
		DuplicateRequests: s.stats.duplicates,
		FaultsApplied:     s.stats.faultsApplied,
		PendingFaults:     slices.Clone(s.faults),
	}
	st.ForeignOrders, st.ForeignOrderIDs = len(s.foreignIDs), nonNil(slices.Clone(s.foreignIDs))
	st.ForeignOrderLookups = s.stats.foreignLookups
	if st.PendingFaults == nil {
		st.PendingFaults = []Fault{}
	}
	for _, b := range s.batches {
		st.Items += len(b.AllocationItems)
		for _, it := range b.AllocationItems {
			if _, ok := s.foreign.Named(it.Description); ok {
				st.ForeignOrderItems++
			}
		}
	}
	return st
}

func (s *Sim) postFault(w http.ResponseWriter, r *http.Request) {
	var f Fault
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	if err := dec.Decode(&f); err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidParameter, "Invalid fault: "+err.Error())
		return
	}
	s.InjectFault(f)
	s.cfg.Logger.Info().Str("fault", string(f.Kind)).Str("method", f.Method).Str("path_prefix", f.PathPrefix).Int("count", max(f.Count, 1)).Msg("fault queued")
	writeJSON(w, http.StatusCreated, s.State())
}

func (s *Sim) deleteFaults(w http.ResponseWriter, _ *http.Request) {
	s.ClearFaults()
	writeJSON(w, http.StatusOK, s.State())
}

func (s *Sim) getState(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.State())
}

func cloneBatch(b *cobo.BatchAllocation) cobo.BatchAllocation {
	c := *b
	c.AllocationParams = slices.Clone(b.AllocationParams)
	c.AllocationItems = slices.Clone(b.AllocationItems)
	return c
}

// newID returns a random UUID (version 4), the form of Cobo's ids.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = fmt.Appendf(nil, `{"error_code":%d,"error_message":"encode response","error_id":%q}`, CodeInternal, newID())
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError writes Cobo's ErrorResponse; error_id is random as Cobo's is.
func writeError(w http.ResponseWriter, status, code int, msg string) {
	writeJSON(w, status, cobo.APIError{Code: code, Message: msg, ErrorID: strings.ReplaceAll(newID(), "-", "")})
}

// statusRecorder remembers the status written, for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// bufferedResponse holds a response so a fault can drop or delay it.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newBufferedResponse() *bufferedResponse { return &bufferedResponse{header: http.Header{}} }

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	return b.body.Write(p)
}

func (b *bufferedResponse) flushTo(w http.ResponseWriter) {
	for k, v := range b.header {
		w.Header()[k] = v
	}
	w.WriteHeader(cmpInt(b.status, http.StatusOK))
	_, _ = w.Write(b.body.Bytes())
}

func cmpInt(v, def int) int {
	if v != 0 {
		return v
	}
	return def
}
