// Package bitgosim simulates the BitGo Go Network client-allocation routes
// that paystream calls, speaking BitGo's wire format, for demos and tests
// on loopback. It checks requests as BitGo documents: a Bearer token, the
// enterprise in the path, the body, that the signed payload matches the
// body, and the payload signature (a Bitcoin Signed Message by the Go
// Account key). It keeps one allocation per clientExternalId in memory,
// can refuse reused nonces (Config.NonceOnce) and can inject faults
// (errors, dropped requests, lost responses, slowness, reserved and
// released answers) so that a client's retry and idempotency logic can be
// checked for exactly-once effects. It is not a security boundary.
package bitgosim

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/gorilla/mux"
	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/bitgo"
	"github.com/paystream/paystream/internal/sandbox/orderref"
)

// Messages the simulator answers with, as BitGo words them where known.
const (
	MsgUnauthorized     = "Unauthorized"
	MsgPayloadMismatch  = "payload does not match request data"
	MsgInvalidSignature = "Payload/Signature are not valid"
	MsgInternal         = "Internal Server Error"
	// ReasonInsufficientBalance is the reason of a FaultRelease allocation.
	ReasonInsufficientBalance = "insufficient balance"
)

// maxBody bounds a request body.
const maxBody = 1 << 20

// initiatedBy is the BitGo user id the simulator puts on allocations.
const initiatedBy = "bitgosim-user"

// Config configures a Sim.
type Config struct {
	// EnterpriseID is the only enterprise served; others get 404.
	EnterpriseID string
	// AccessToken is the only Bearer token accepted; with none, every
	// request gets 401.
	AccessToken string
	// SigningPub verifies payload signatures; with none, every allocation
	// gets 401.
	SigningPub *secp256k1.PublicKey
	// Logger receives a line per recorded allocation and fault (info) and
	// per request (debug). It never logs tokens or signatures.
	Logger zerolog.Logger
	// ReplayConflict makes a replay of a recorded clientExternalId answer
	// 409 {"error"} instead of 200 with the recorded allocation. BitGo does
	// not document which it does; clients must cope with both.
	ReplayConflict bool
	// NonceOnce makes each nonce usable once, as BitGo documents the field
	// ("must be unique for each request", "the signature can only be used
	// once"): a POST whose nonce the simulator has seen before is refused
	// with NonceReusedStatus and {"error": MsgNonceReused, "errorName":
	// ErrNameNonceReused}, before its clientExternalId is looked at, so
	// that even a byte-for-byte replay of a recorded allocation is
	// refused. A nonce counts as seen once its request passed
	// authentication, validation and the signature check, whatever
	// happens to the request afterwards (faults included). Whether and how
	// BitGo refuses a reused nonce is not documented.
	NonceOnce bool
	// NonceReusedStatus is the HTTP status of a NonceOnce refusal; 400
	// (BitGo's status for a request whose payload or signature it does
	// not accept) when zero.
	NonceReusedStatus int
}

// MsgReplayConflict is the error of a refused replay (Config.ReplayConflict).
const MsgReplayConflict = "clientExternalId already exists"

// MsgNonceReused and ErrNameNonceReused are the error and errorName of a
// refused reused nonce (Config.NonceOnce), in the {errorName, error} shape
// some of BitGo's network routes use (V1ErrorResponse).
const (
	MsgNonceReused     = "nonce has already been used"
	ErrNameNonceReused = "InvalidNonceError"
)

// Sim is an in-memory BitGo Go Network API. It implements http.Handler;
// mount it at the server root (its paths start /api/network/v1/...). It
// is safe for concurrent use.
type Sim struct {
	cfg    Config
	router *mux.Router

	mu     sync.Mutex
	allocs []*record // creation order
	byID   map[string]*record
	byExt  map[string]*record
	faults []Fault
	// nonces holds every nonce seen, with NonceOnce.
	nonces       map[string]struct{}
	nonceRefused int
}

type record struct {
	a bitgo.Allocation
	// clearOnRead makes a reserved allocation cleared at its next read.
	clearOnRead bool
}

// New returns a Sim serving:
//
//	POST /api/network/v1/enterprises/{eid}/clients/connections/{cid}/allocations
//	GET  /api/network/v1/enterprises/{eid}/clients/allocations/{id}
//	GET  /api/network/v1/enterprises/{eid}/clients/allocations
func New(cfg Config) *Sim {
	s := &Sim{
		cfg:    cfg,
		byID:   map[string]*record{},
		byExt:  map[string]*record{},
		nonces: map[string]struct{}{},
	}
	// Encoded paths keep an escaped '/' inside an id from splitting it.
	r := mux.NewRouter().UseEncodedPath()
	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, "Not found")
	})
	// Methods are checked by route() rather than mux's Methods(): with
	// subrouters, mux 1.8.1 turns some method mismatches into 404s.
	e := r.PathPrefix("/api/network/v1/enterprises/{enterpriseId}").Subrouter()
	e.Handle("/clients/connections/{connectionId}/allocations", s.route(http.MethodPost, s.postAllocation))
	e.Handle("/clients/allocations/{allocationId}", s.route(http.MethodGet, s.getAllocation))
	e.Handle("/clients/allocations", s.route(http.MethodGet, s.listAllocations))
	s.router = r
	return s
}

// ServeHTTP implements http.Handler. Authentication comes first, as at
// BitGo, so an unauthenticated caller learns nothing about paths.
func (s *Sim) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	defer func() {
		s.cfg.Logger.Debug().Str("method", r.Method).Str("path", r.URL.Path).Int("status", rec.status).Msg("bitgo api request")
	}()
	if !s.authorized(r) {
		writeError(rec, http.StatusUnauthorized, MsgUnauthorized)
		return
	}
	s.router.ServeHTTP(rec, r)
}

// Allocations returns a copy of every recorded allocation, in creation
// order, as currently stored (a reserved allocation awaiting its first
// read is still reserved). Tests use it for exactly-once assertions.
func (s *Sim) Allocations() []bitgo.Allocation {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]bitgo.Allocation, len(s.allocs))
	for i, rec := range s.allocs {
		out[i] = rec.a
	}
	return out
}

// AllocationsNaming returns the recorded allocations (in creation order,
// as Allocations returns them) whose notes name one of orderIDs as a whole
// token (see orderref.Set.Named). paystream sends an item's description,
// which holds its order id, as the notes; an allocation without notes
// names no order.
func (s *Sim) AllocationsNaming(orderIDs ...string) []bitgo.Allocation {
	set := orderref.NewSet(orderIDs...)
	var out []bitgo.Allocation
	for _, a := range s.Allocations() {
		if _, ok := set.Named(a.Notes); ok {
			out = append(out, a)
		}
	}
	return out
}

// NoncesRefused returns how many POSTs were refused for a reused nonce
// (Config.NonceOnce).
func (s *Sim) NoncesRefused() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nonceRefused
}

// spendNonce records nonce as seen and reports whether it was unseen.
func (s *Sim) spendNonce(nonce string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.nonces[nonce]; ok {
		s.nonceRefused++
		return false
	}
	s.nonces[nonce] = struct{}{}
	return true
}

// InjectFault queues f for upcoming POST allocations (see Fault).
func (s *Sim) InjectFault(f Fault) {
	if f.Count <= 0 {
		f.Count = 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = append(s.faults, f)
}

func (s *Sim) takeFault() (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.faults) == 0 {
		return Fault{}, false
	}
	f := s.faults[0]
	s.faults[0].Count--
	if s.faults[0].Count <= 0 {
		s.faults = s.faults[1:]
	}
	return f, true
}

func (s *Sim) authorized(r *http.Request) bool {
	if s.cfg.AccessToken == "" {
		return false
	}
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(token)), []byte(s.cfg.AccessToken)) == 1
}

// route serves next for method only, and only if the path names the
// served enterprise (404 otherwise).
func (s *Sim) route(method string, next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if pathVar(r, "enterpriseId") != s.cfg.EnterpriseID {
			writeError(w, http.StatusNotFound, "Enterprise not found")
			return
		}
		if r.Method != method {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, "Method not allowed")
			return
		}
		next(w, r)
	})
}

// allocRequest is the POST body. Notes is a pointer to tell an absent key
// from an empty one, which BitGo rejects (minLength 1).
type allocRequest struct {
	Amount           *bitgo.Amount `json:"amount"`
	ClientExternalID string        `json:"clientExternalId"`
	Nonce            string        `json:"nonce"`
	Notes            *string       `json:"notes"`
	Payload          string        `json:"payload"`
	Signature        string        `json:"signature"`
}

func (q *allocRequest) validate() string {
	switch {
	case q.Amount == nil:
		return "amount is required"
	case q.Amount.Currency == "":
		return "amount.currency is required"
	case !isPositiveInteger(q.Amount.Quantity):
		return "amount.quantity must be a positive integer string"
	case q.ClientExternalID == "":
		return "clientExternalId is required"
	case q.Nonce == "":
		return "nonce is required"
	case q.Notes != nil && *q.Notes == "":
		return "notes must not be empty"
	case q.Payload == "":
		return "payload is required"
	case q.Signature == "":
		return "signature is required"
	}
	return ""
}

func (s *Sim) postAllocation(w http.ResponseWriter, r *http.Request) {
	cid := pathVar(r, "connectionId")
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		writeError(w, http.StatusBadRequest, "Could not read the request body")
		return
	}
	var req allocRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	// Unknown fields are rejected so that a client drifting from BitGo's
	// schema fails here rather than at BitGo.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		writeError(w, http.StatusBadRequest, "Malformed request body")
		return
	}
	if msg := req.validate(); msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	if !payloadMatches(req.Payload, &req, s.cfg.EnterpriseID, cid) {
		writeError(w, http.StatusBadRequest, MsgPayloadMismatch)
		return
	}
	if err := bitgo.VerifyMessage(s.cfg.SigningPub, []byte(req.Payload), req.Signature); err != nil {
		s.cfg.Logger.Info().Str("client_external_id", req.ClientExternalID).Err(err).Msg("bitgo allocation with invalid signature")
		writeError(w, http.StatusUnauthorized, MsgInvalidSignature)
		return
	}
	if s.cfg.NonceOnce && !s.spendNonce(req.Nonce) {
		// The nonce is checked before the clientExternalId, as part of
		// the request's authentication: a replay is refused even when it
		// names a recorded allocation.
		status := s.cfg.NonceReusedStatus
		if status == 0 {
			status = http.StatusBadRequest
		}
		s.cfg.Logger.Info().Str("client_external_id", req.ClientExternalID).Int("status", status).Msg("bitgo allocation with a reused nonce refused")
		writeJSON(w, status, map[string]string{"error": MsgNonceReused, "errorName": ErrNameNonceReused})
		return
	}

	f, faulty := s.takeFault()
	if faulty {
		s.cfg.Logger.Info().Str("fault", string(f.Kind)).Str("client_external_id", req.ClientExternalID).Msg("bitgo fault")
		switch f.Kind {
		case FaultError500:
			writeError(w, http.StatusInternalServerError, MsgInternal)
			return
		case FaultDrop:
			// No answer at all: the server closes the connection, and
			// nothing is recorded (the nonce is spent, see NonceOnce).
			panic(http.ErrAbortHandler)
		case FaultReserveRetriable:
			now := timestamp()
			writeJSON(w, http.StatusInternalServerError, map[string]any{"allocation": wire(bitgo.Allocation{
				ID:               newUUID(),
				ConnectionID:     cid,
				ClientExternalID: req.ClientExternalID,
				Status:           bitgo.StatusReserved,
				Reason:           "allocation could not be completed, retry the same request",
				Notes:            deref(req.Notes),
				Amount:           *req.Amount,
				Retriable:        true,
				CreatedAt:        now,
				UpdatedAt:        now,
			}, false)})
			return
		case FaultSlow:
			d := f.Delay
			if d <= 0 {
				d = DefaultSlowDelay
			}
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-r.Context().Done():
				// BitGo would go on processing after the client left.
				t.Stop()
			}
		}
	}

	a, conflict, replay := s.allocate(cid, &req, f.Kind)
	if conflict != "" {
		writeError(w, http.StatusBadRequest, conflict)
		return
	}
	if replay && s.cfg.ReplayConflict {
		writeError(w, http.StatusConflict, MsgReplayConflict)
		return
	}
	if f.Kind == FaultLoseResponse {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "<html><body><h1>502 Bad Gateway</h1></body></html>\n")
		return
	}
	if a.Status == bitgo.StatusReleased {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{
			"allocation": wire(a, false),
			"error":      "Allocation released: " + a.Reason,
		})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"allocation": wire(a, false)})
}

// allocate returns the allocation recorded for req.ClientExternalID
// (replay true), recording a new one shaped by kind if there is none. A
// recorded clientExternalId with different request data is a conflict.
func (s *Sim) allocate(cid string, req *allocRequest, kind FaultKind) (bitgo.Allocation, string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec, ok := s.byExt[req.ClientExternalID]; ok {
		if rec.a.ConnectionID != cid || rec.a.Amount != *req.Amount || rec.a.Notes != deref(req.Notes) {
			return bitgo.Allocation{}, "clientExternalId already used for a different allocation", true
		}
		return s.readLocked(rec), "", true
	}
	now := timestamp()
	rec := &record{a: bitgo.Allocation{
		ID:               newUUID(),
		ConnectionID:     cid,
		ClientExternalID: req.ClientExternalID,
		Status:           bitgo.StatusCleared,
		Notes:            deref(req.Notes),
		Amount:           *req.Amount,
		CreatedAt:        now,
		UpdatedAt:        now,
	}}
	switch kind {
	case FaultReserved:
		rec.a.Status = bitgo.StatusReserved
		rec.a.Reason = "allocation is being processed asynchronously"
		rec.clearOnRead = true
	case FaultRelease:
		rec.a.Status = bitgo.StatusReleased
		rec.a.Reason = ReasonInsufficientBalance
	}
	s.allocs = append(s.allocs, rec)
	s.byID[rec.a.ID] = rec
	s.byExt[rec.a.ClientExternalID] = rec
	s.cfg.Logger.Info().
		Str("allocation_id", rec.a.ID).
		Str("client_external_id", rec.a.ClientExternalID).
		Str("connection_id", cid).
		Str("currency", rec.a.Amount.Currency).
		Str("quantity", rec.a.Amount.Quantity).
		Str("status", rec.a.Status).
		Msg("bitgo allocation recorded")
	return rec.a, "", false
}

// readLocked returns rec's allocation as a reader sees it now, clearing a
// reserved one on its first read.
func (s *Sim) readLocked(rec *record) bitgo.Allocation {
	if rec.clearOnRead {
		rec.clearOnRead = false
		rec.a.Status = bitgo.StatusCleared
		rec.a.Reason = ""
		rec.a.UpdatedAt = timestamp()
		s.cfg.Logger.Info().Str("allocation_id", rec.a.ID).Msg("bitgo reserved allocation cleared")
	}
	return rec.a
}

func (s *Sim) getAllocation(w http.ResponseWriter, r *http.Request) {
	id := pathVar(r, "allocationId")
	s.mu.Lock()
	rec, ok := s.byID[id]
	var a bitgo.Allocation
	if ok {
		a = s.readLocked(rec)
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, "Allocation not found")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"allocation": wire(a, true)})
}

// listAllocations supports the allocationIds[], statuses[],
// connectionIds[] and currencies[] filters (with or without "[]") and
// pageNumber (0-based) with pageSize; without pageSize all match.
func (s *Sim) listAllocations(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	filters := map[string]func(bitgo.Allocation) string{
		"allocationIds": func(a bitgo.Allocation) string { return a.ID },
		"statuses":      func(a bitgo.Allocation) string { return a.Status },
		"connectionIds": func(a bitgo.Allocation) string { return a.ConnectionID },
		"currencies":    func(a bitgo.Allocation) string { return a.Amount.Currency },
	}
	sets := map[string]map[string]bool{}
	for name := range filters {
		for _, v := range append(q[name], q[name+"[]"]...) {
			if sets[name] == nil {
				sets[name] = map[string]bool{}
			}
			sets[name][v] = true
		}
	}
	page, errPage := atoiParam(q.Get("pageNumber"))
	size, errSize := atoiParam(q.Get("pageSize"))
	if errPage != nil || errSize != nil {
		writeError(w, http.StatusBadRequest, "pageNumber and pageSize must be non-negative integers")
		return
	}

	out := []any{}
	s.mu.Lock()
	for _, rec := range s.allocs {
		a := s.readLocked(rec)
		match := true
		for name, set := range sets {
			if !set[filters[name](a)] {
				match = false
				break
			}
		}
		if match {
			out = append(out, wire(a, true))
		}
	}
	s.mu.Unlock()
	if size > 0 {
		start := min(page*size, len(out))
		out = out[start:min(start+size, len(out))]
	}
	writeJSON(w, http.StatusOK, map[string]any{"allocations": out})
}

// payloadMatches reports whether payload is a JSON object whose fields
// equal the request's: connectionId (from the path), amount,
// clientExternalId, nonce, notes (absent in both or equal) and, if
// present, enterpriseId. Key order and spacing do not matter, as BitGo
// appears to parse rather than byte-compare; other keys do not match.
func payloadMatches(payload string, req *allocRequest, eid, cid string) bool {
	var p map[string]json.RawMessage
	if err := json.Unmarshal([]byte(payload), &p); err != nil || p == nil {
		return false
	}
	for k := range p {
		switch k {
		case "connectionId", "amount", "notes", "clientExternalId", "nonce", "enterpriseId":
		default:
			return false
		}
	}
	str := func(k string) (string, bool) {
		raw, ok := p[k]
		if !ok {
			return "", false
		}
		var v string
		if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &v) != nil {
			return "", false
		}
		return v, true
	}
	eq := func(k, want string) bool {
		v, ok := str(k)
		return ok && v == want
	}
	if !eq("connectionId", cid) || !eq("clientExternalId", req.ClientExternalID) || !eq("nonce", req.Nonce) {
		return false
	}
	if _, ok := p["enterpriseId"]; ok && !eq("enterpriseId", eid) {
		return false
	}
	if _, ok := p["notes"]; ok != (req.Notes != nil) || (ok && !eq("notes", *req.Notes)) {
		return false
	}
	var amt map[string]json.RawMessage
	if json.Unmarshal(p["amount"], &amt) != nil || len(amt) != 2 {
		return false
	}
	p = amt
	return eq("currency", req.Amount.Currency) && eq("quantity", req.Amount.Quantity)
}

// wireAllocation is an allocation as BitGo sends it. Type is only on GET
// and list answers.
type wireAllocation struct {
	bitgo.Allocation
	InitiatedBy string `json:"initiatedBy"`
	Type        string `json:"type,omitempty"`
}

func wire(a bitgo.Allocation, withType bool) wireAllocation {
	w := wireAllocation{Allocation: a, InitiatedBy: initiatedBy}
	if withType {
		w.Type = "allocation"
	}
	return w
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// pathVar returns a route variable, unescaped (the router matches encoded
// paths). An undecodable value yields itself, which then matches nothing.
func pathVar(r *http.Request, name string) string {
	v := mux.Vars(r)[name]
	if u, err := url.PathUnescape(v); err == nil {
		return u
	}
	return v
}

func atoiParam(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad number %q", s)
	}
	return n, nil
}

func isPositiveInteger(s string) bool {
	if s == "" || s[0] == '0' || len(s) > 78 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func timestamp() string {
	return time.Now().UTC().Format("2006-01-02T15:04:05.000Z")
}

// newUUID returns a random version 4 UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}
