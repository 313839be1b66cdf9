package cobo

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// API request signing headers.
const (
	HeaderAPIKey       = "Biz-Api-Key"
	HeaderAPINonce     = "Biz-Api-Nonce"
	HeaderAPISignature = "Biz-Api-Signature"
)

// Base URLs of Cobo's API, including the /v2 prefix that is part of the
// signed path.
const (
	DevAPIURL  = "https://api.dev.cobo.com/v2"
	ProdAPIURL = "https://api.cobo.com/v2"
)

// Duplicate request_id error codes. Cobo does not document which one
// POST /payments/batch_allocations returns, so all are treated alike; and
// each may mean something else too (30001 is also "pricing plan does not
// support this feature"), so a code is only a hint to look the batch up.
var duplicateRequestCodes = []int{12009, 2040, 30001}

// Error codes saying the request's credentials were refused: 2022 missing
// headers, 2023 missing or invalid signature (also a nonce Cobo refuses,
// UNCONFIRMED), 2024 API key authentication failed (wrong environment, key
// not active, IP not whitelisted), 2025 and 4001 forbidden.
var credentialCodes = []int{2022, 2023, 2024, 2025, 4001}

// credentialWords mark an error message about the credentials whatever its
// code: Cobo's code for a refused nonce or skewed clock is not documented.
var credentialWords = []string{"nonce", "signature", "api key", "api-key", "api_key", "biz-api"}

// APIStringToSign is METHOD|PATH|NONCE|QUERY|BODY, where PATH includes /v2,
// QUERY is the encoded query exactly as sent and BODY the exact bytes sent.
func APIStringToSign(method, path, nonce, query string, body []byte) []byte {
	var b strings.Builder
	b.Grow(len(method) + len(path) + len(nonce) + len(query) + len(body) + 4)
	b.WriteString(strings.ToUpper(method))
	b.WriteByte('|')
	b.WriteString(path)
	b.WriteByte('|')
	b.WriteString(nonce)
	b.WriteByte('|')
	b.WriteString(query)
	b.WriteByte('|')
	b.Write(body)
	return []byte(b.String())
}

// APISigner signs Cobo API requests with an Ed25519 API secret.
type APISigner struct {
	key ed25519.PrivateKey
}

// NewAPISigner parses a hex 32-byte Ed25519 seed, as Cobo's API secret is
// issued. A malformed secret is an error, never a panic.
func NewAPISigner(secretHex string) (*APISigner, error) {
	seed, err := hex.DecodeString(strings.TrimSpace(secretHex))
	if err != nil {
		return nil, errors.New("cobo api secret is not hex")
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("cobo api secret has %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	return &APISigner{key: ed25519.NewKeyFromSeed(seed)}, nil
}

// APIKey returns the hex public key sent as Biz-Api-Key.
func (s *APISigner) APIKey() string {
	return hex.EncodeToString(s.key.Public().(ed25519.PublicKey))
}

// Sign returns the hex Biz-Api-Signature for a request.
func (s *APISigner) Sign(method, path, nonce, query string, body []byte) string {
	return hex.EncodeToString(ed25519.Sign(s.key, Digest(APIStringToSign(method, path, nonce, query, body))))
}

// VerifyAPIRequest checks a Biz-Api-Signature made by the holder of
// apiKeyHex. The sandbox uses it to verify the client as Cobo would.
func VerifyAPIRequest(apiKeyHex, signatureHex, method, path, nonce, query string, body []byte) error {
	pub, err := hex.DecodeString(apiKeyHex)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: %s is not a hex Ed25519 public key", ErrInvalidSignature, HeaderAPIKey)
	}
	sig, err := hex.DecodeString(signatureHex)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: %s is not a hex Ed25519 signature", ErrInvalidSignature, HeaderAPISignature)
	}
	if !ed25519.Verify(ed25519.PublicKey(pub), Digest(APIStringToSign(method, path, nonce, query, body)), sig) {
		return fmt.Errorf("%w: signature does not match the request", ErrInvalidSignature)
	}
	return nil
}

// APIError is Cobo's error body, with the HTTP status it came with.
type APIError struct {
	HTTPStatus int `json:"-"`
	// Retried is set by the client when this answer came to a retry of the
	// same request within one call, after a try that got no definite
	// answer (5xx, 429, timeout, lost response): that earlier try may have
	// taken effect, whatever this answer says.
	Retried bool   `json:"-"`
	Code    int    `json:"error_code"`
	Message string `json:"error_message"`
	ErrorID string `json:"error_id"`
}

// Error implements error.
func (e *APIError) Error() string {
	return fmt.Sprintf("cobo api: http %d, error_code %d: %s (error_id %s)", e.HTTPStatus, e.Code, e.Message, e.ErrorID)
}

// DuplicateRequest reports whether the error code is one Cobo may use for
// "request_id already used" (12009, 2040, 30001). It is a hint, never a
// proof that the resource exists: look it up by request_id.
func (e *APIError) DuplicateRequest() bool {
	return slices.Contains(duplicateRequestCodes, e.Code)
}

// CredentialProblem reports whether Cobo refused the request's credentials
// rather than the request: HTTP 401 or 403, an error code about headers,
// signature, API key or permissions, or a message naming the nonce, the
// signature or the API key. Such a request may succeed unchanged once the
// key, the clock or the permissions are fixed.
func (e *APIError) CredentialProblem() bool {
	if e.HTTPStatus == http.StatusUnauthorized || e.HTTPStatus == http.StatusForbidden || slices.Contains(credentialCodes, e.Code) {
		return true
	}
	msg := strings.ToLower(e.Message)
	for _, w := range credentialWords {
		if strings.Contains(msg, w) {
			return true
		}
	}
	return false
}

// EndpointProblem reports whether the answer is about where or how the
// request was sent, not what it asked: a 404 with code 2021 ("endpoint not
// implemented or wrong path") or without a Cobo error code (a proxy's
// page), a 405, or a 406 (the body not declared JSON). Such a request may
// succeed unchanged once the base URL or the client is fixed.
func (e *APIError) EndpointProblem() bool {
	switch e.HTTPStatus {
	case http.StatusNotFound:
		return e.Code == 2021 || e.Code == 0
	case http.StatusMethodNotAllowed, http.StatusNotAcceptable:
		return true
	}
	return e.Code == 2021
}

// Retryable reports whether the same request may succeed later: 5xx and 429.
func (e *APIError) Retryable() bool {
	return e.HTTPStatus >= 500 || e.HTTPStatus == 429
}

// AllocationParam is one item of a batch allocation request.
type AllocationParam struct {
	TokenID            string `json:"token_id"`
	Amount             string `json:"amount"`
	SourceAccount      string `json:"source_account"`
	DestinationAccount string `json:"destination_account"`
	Description        string `json:"description"`
}

// CreateBatchAllocationRequest is the body of POST /payments/batch_allocations.
type CreateBatchAllocationRequest struct {
	RequestID        string            `json:"request_id"`
	AllocationParams []AllocationParam `json:"allocation_params"`
}

// Batch allocation statuses.
const (
	BatchPending            = "Pending"
	BatchProcessing         = "Processing"
	BatchCompleted          = "Completed"
	BatchPartiallyCompleted = "PartiallyCompleted"
	BatchFailed             = "Failed"
)

// Allocation item statuses.
const (
	ItemPending      = "Pending"
	ItemTransferring = "Transferring"
	ItemCompleted    = "Completed"
	ItemFailed       = "Failed"
)

// BatchAllocation is returned by create and list.
type BatchAllocation struct {
	BatchAllocationID string            `json:"batch_allocation_id"`
	RequestID         string            `json:"request_id"`
	AllocationParams  []AllocationParam `json:"allocation_params,omitempty"`
	AllocationItems   []AllocationItem  `json:"allocation_items,omitempty"`
	Initiator         string            `json:"initiator,omitempty"`
	Status            string            `json:"status,omitempty"`
	CreatedTimestamp  Int64             `json:"created_timestamp,omitempty"`
	UpdatedTimestamp  Int64             `json:"updated_timestamp,omitempty"`
}

// AllocationItem is one item of a BatchAllocationDetail.
type AllocationItem struct {
	AllocationItemID   string `json:"allocation_item_id"`
	BatchAllocationID  string `json:"batch_allocation_id"`
	TokenID            string `json:"token_id"`
	Amount             string `json:"amount"`
	SourceAccount      string `json:"source_account"`
	DestinationAccount string `json:"destination_account"`
	Description        string `json:"description"`
	Status             string `json:"status,omitempty"`
}

// Pagination is Cobo's list pagination block.
type Pagination struct {
	Before     string `json:"before"`
	After      string `json:"after"`
	TotalCount int    `json:"total_count"`
}

// UnmarshalJSON implements json.Unmarshaler, tolerating the shapes a list
// answer may take: cursors that are null, absent or numbers, and a
// total_count that is a number, a string or null.
func (p *Pagination) UnmarshalJSON(b []byte) error {
	var raw struct {
		Before     json.RawMessage `json:"before"`
		After      json.RawMessage `json:"after"`
		TotalCount Int64           `json:"total_count"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("pagination: %w", err)
	}
	before, err := cursor(raw.Before)
	if err != nil {
		return fmt.Errorf("pagination.before: %w", err)
	}
	after, err := cursor(raw.After)
	if err != nil {
		return fmt.Errorf("pagination.after: %w", err)
	}
	*p = Pagination{Before: before, After: after, TotalCount: int(raw.TotalCount)}
	return nil
}

// cursor reads a pagination cursor: a string, a number (kept as written),
// or null/absent for none.
func cursor(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return "", nil
	case raw[0] == '"':
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", fmt.Errorf("want a string or number, got %.40s", raw)
	}
	return n.String(), nil
}

// BatchAllocationList is the body of GET /payments/batch_allocations.
type BatchAllocationList struct {
	Data       []BatchAllocation `json:"data"`
	Pagination Pagination        `json:"pagination"`
}
