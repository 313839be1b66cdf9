package cobosim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/paystream/paystream/internal/cobo"
)

// plainDecimal is the amount syntax accepted: digits with an optional
// fraction. Exponents, signs and spaces are rejected even though decimal
// parses some of them, because Cobo documents amounts as "500.00".
var plainDecimal = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?$`)

// parseAmount checks a decimal string amount and returns it.
func parseAmount(s string) (decimal.Decimal, bool) {
	if !plainDecimal.MatchString(s) {
		return decimal.Decimal{}, false
	}
	d, err := decimal.NewFromString(s)
	if err != nil || !d.IsPositive() {
		return decimal.Decimal{}, false
	}
	return d, true
}

// decodeStrict decodes a JSON object body, rejecting trailing data.
func decodeStrict(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON object")
	}
	return nil
}

// firstMissing takes name, value pairs and returns the first name whose
// value is absent or blank, in argument order so messages are stable.
func firstMissing(pairs ...any) string {
	for i := 0; i+1 < len(pairs); i += 2 {
		v, _ := pairs[i+1].(*string)
		if v == nil || strings.TrimSpace(*v) == "" {
			return pairs[i].(string)
		}
	}
	return ""
}

// createBatchRequest mirrors cobo.CreateBatchAllocationRequest with
// pointers, so that an absent field differs from an empty one.
type createBatchRequest struct {
	RequestID        *string        `json:"request_id"`
	AllocationParams []allocationIn `json:"allocation_params"`
}

type allocationIn struct {
	TokenID            *string `json:"token_id"`
	Amount             *string `json:"amount"`
	SourceAccount      *string `json:"source_account"`
	DestinationAccount *string `json:"destination_account"`
	Description        *string `json:"description"`
}

// createBatch is POST /v2/payments/batch_allocations. The request_id check
// and the insert happen under one lock, so concurrent creates with the same
// request_id record exactly one batch.
func (s *Sim) createBatch(w http.ResponseWriter, r *http.Request) {
	var in createBatchRequest
	if err := decodeStrict(r, &in); err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidParameter, "Invalid request body: "+err.Error())
		return
	}
	if in.RequestID == nil || strings.TrimSpace(*in.RequestID) == "" {
		writeError(w, http.StatusBadRequest, CodeMissingParameter, "Missing parameter: request_id")
		return
	}
	if len(in.AllocationParams) == 0 {
		writeError(w, http.StatusBadRequest, CodeMissingParameter, "Missing parameter: allocation_params")
		return
	}
	params := make([]cobo.AllocationParam, 0, len(in.AllocationParams))
	for i, p := range in.AllocationParams {
		// description is required but may be empty; the others must not be.
		if name := firstMissing("token_id", p.TokenID, "amount", p.Amount, "source_account", p.SourceAccount, "destination_account", p.DestinationAccount); name != "" {
			writeError(w, http.StatusBadRequest, CodeMissingParameter, fmt.Sprintf("Missing parameter: allocation_params[%d].%s", i, name))
			return
		}
		if p.Description == nil {
			writeError(w, http.StatusBadRequest, CodeMissingParameter, fmt.Sprintf("Missing parameter: allocation_params[%d].description", i))
			return
		}
		if _, ok := parseAmount(*p.Amount); !ok {
			writeError(w, http.StatusBadRequest, CodeInvalidAmount, fmt.Sprintf("Invalid amount %q in allocation_params[%d]: want a positive decimal string", *p.Amount, i))
			return
		}
		// The reference does not say how Cobo answers a transfer from an
		// account to itself (UNCONFIRMED); the simulator refuses the whole
		// batch with its generic invalid-parameter answer, 400 code 2006,
		// as it does any other invalid parameter.
		if *p.SourceAccount == *p.DestinationAccount {
			writeError(w, http.StatusBadRequest, CodeInvalidParameter, fmt.Sprintf("allocation_params[%d]: source_account and destination_account are the same", i))
			return
		}
		params = append(params, cobo.AllocationParam{
			TokenID: *p.TokenID, Amount: *p.Amount, SourceAccount: *p.SourceAccount,
			DestinationAccount: *p.DestinationAccount, Description: *p.Description,
		})
	}

	s.mu.Lock()
	if _, dup := s.byReq[*in.RequestID]; dup {
		s.stats.duplicates++
		s.mu.Unlock()
		s.cfg.Logger.Info().Str("request_id", *in.RequestID).Int("error_code", s.cfg.DuplicateCode).Msg("duplicate request_id rejected")
		writeError(w, http.StatusBadRequest, s.cfg.DuplicateCode, DuplicateRequestMessage)
		return
	}
	now := cobo.Int64(time.Now().Unix())
	b := &cobo.BatchAllocation{
		BatchAllocationID: newID(),
		RequestID:         *in.RequestID,
		AllocationParams:  params,
		Initiator:         r.Header.Get(cobo.HeaderAPIKey),
		CreatedTimestamp:  now,
		UpdatedTimestamp:  now,
	}
	for _, p := range params {
		// Allocations are ledger-only, so items complete at once unless
		// the test asked for another status for this destination.
		status, ok := s.itemStatus[p.DestinationAccount]
		if !ok {
			status = cobo.ItemCompleted
		}
		b.AllocationItems = append(b.AllocationItems, cobo.AllocationItem{
			AllocationItemID: newID(), BatchAllocationID: b.BatchAllocationID,
			TokenID: p.TokenID, Amount: p.Amount, SourceAccount: p.SourceAccount,
			DestinationAccount: p.DestinationAccount, Description: p.Description, Status: status,
		})
	}
	b.Status = batchStatus(b.AllocationItems)
	s.batches = append(s.batches, b)
	s.byID[b.BatchAllocationID] = b
	s.byReq[b.RequestID] = b
	out := s.listView(b)
	s.mu.Unlock()

	s.cfg.Logger.Info().Str("request_id", b.RequestID).Str("batch_allocation_id", b.BatchAllocationID).
		Int("items", len(params)).Str("status", b.Status).Msg("batch allocation recorded")
	writeJSON(w, http.StatusCreated, out)
}

// listView is a BatchAllocation as create and list return it: with
// allocation_params, without allocation_items; without status in
// ShapeSeed.
func (s *Sim) listView(b *cobo.BatchAllocation) cobo.BatchAllocation {
	c := cloneBatch(b)
	c.AllocationItems = nil
	if s.cfg.Shape == ShapeSeed {
		c.Status = ""
	}
	return c
}

// detailView is a BatchAllocationDetail: allocation_items instead of
// allocation_params; without any status in ShapeSeed.
func (s *Sim) detailView(b *cobo.BatchAllocation) cobo.BatchAllocation {
	c := cloneBatch(b)
	c.AllocationParams = nil
	if s.cfg.Shape == ShapeSeed {
		c.Status = ""
		for i := range c.AllocationItems {
			c.AllocationItems[i].Status = ""
		}
	}
	return c
}

// getBatch is GET /v2/payments/batch_allocations/{id}.
func (s *Sim) getBatch(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	b, ok := s.byID[id]
	var out cobo.BatchAllocation
	if ok {
		out = s.detailView(b)
	}
	s.mu.Unlock()
	if !ok {
		writeError(w, http.StatusNotFound, CodeNotFound, "Batch allocation not found: "+id)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// listBatches is GET /v2/payments/batch_allocations with request_id, limit,
// before and after. It lists newest first.
func (s *Sim) listBatches(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	page, ok := parsePage(w, q)
	if !ok {
		return
	}
	requestID := q.Get("request_id")
	s.mu.Lock()
	var all []cobo.BatchAllocation
	for _, b := range slices.Backward(s.batches) {
		if requestID == "" || b.RequestID == requestID {
			all = append(all, s.listView(b))
		}
	}
	s.mu.Unlock()
	data, pg, ok := paginate(all, func(b cobo.BatchAllocation) string { return b.BatchAllocationID }, page)
	if !ok {
		writeError(w, http.StatusBadRequest, CodeInvalidParameter, "Unknown pagination cursor")
		return
	}
	writeJSON(w, http.StatusOK, cobo.BatchAllocationList{Data: nonNil(data), Pagination: pg})
}

// itemList is the body of GET /v2/payments/allocation_items.
type itemList struct {
	Data       []cobo.AllocationItem `json:"data"`
	Pagination cobo.Pagination       `json:"pagination"`
}

// listItems is GET /v2/payments/allocation_items with Cobo's filters,
// newest first.
func (s *Sim) listItems(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	page, ok := parsePage(w, q)
	if !ok {
		return
	}
	match := func(it cobo.AllocationItem) bool {
		for name, v := range map[string]string{"source_account": it.SourceAccount, "destination_account": it.DestinationAccount, "token_id": it.TokenID, "batch_allocation_id": it.BatchAllocationID} {
			if want := q.Get(name); want != "" && want != v {
				return false
			}
		}
		return true
	}
	s.mu.Lock()
	var all []cobo.AllocationItem
	for _, b := range slices.Backward(s.batches) {
		for _, it := range slices.Backward(b.AllocationItems) {
			if match(it) {
				if s.cfg.Shape == ShapeSeed {
					it.Status = ""
				}
				all = append(all, it)
			}
		}
	}
	s.mu.Unlock()
	data, pg, ok := paginate(all, func(it cobo.AllocationItem) string { return it.AllocationItemID }, page)
	if !ok {
		writeError(w, http.StatusBadRequest, CodeInvalidParameter, "Unknown pagination cursor")
		return
	}
	writeJSON(w, http.StatusOK, itemList{Data: nonNil(data), Pagination: pg})
}

type pageQuery struct {
	limit         int
	before, after string
}

// parsePage reads limit (default 10, 1 to 50), before and after, writing
// the error response itself when they are invalid.
func parsePage(w http.ResponseWriter, q url.Values) (pageQuery, bool) {
	p := pageQuery{limit: 10, before: q.Get("before"), after: q.Get("after")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 50 {
			writeError(w, http.StatusBadRequest, CodeInvalidParameter, "limit must be an integer from 1 to 50")
			return p, false
		}
		p.limit = n
	}
	if p.before != "" && p.after != "" {
		writeError(w, http.StatusBadRequest, CodeInvalidParameter, "Use before or after, not both")
		return p, false
	}
	return p, true
}

// paginate cuts one page out of all. after=X gives the items following X,
// before=X the ones preceding it; the returned cursors are the ids at the
// page's edges when more items lie beyond them. ok is false for a cursor
// that names no item.
func paginate[T any](all []T, id func(T) string, p pageQuery) (page []T, pg cobo.Pagination, ok bool) {
	idx := func(cursor string) int {
		return slices.IndexFunc(all, func(v T) bool { return id(v) == cursor })
	}
	start, end := 0, len(all)
	switch {
	case p.after != "":
		i := idx(p.after)
		if i < 0 {
			return nil, pg, false
		}
		start = i + 1
		end = min(len(all), start+p.limit)
	case p.before != "":
		i := idx(p.before)
		if i < 0 {
			return nil, pg, false
		}
		end = i
		start = max(0, end-p.limit)
	default:
		end = min(len(all), p.limit)
	}
	page = all[start:end]
	pg.TotalCount = len(all)
	if len(page) > 0 && start > 0 {
		pg.Before = id(page[0])
	}
	if len(page) > 0 && end < len(all) {
		pg.After = id(page[len(page)-1])
	}
	return page, pg, true
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// getOrder is GET /v2/payments/orders/{order_id}.
func (s *Sim) getOrder(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("order_id")
	s.mu.Lock()
	o, ok := s.orders[id]
	_, foreign := s.foreign[id]
	foreign = foreign && !ok
	if foreign {
		s.stats.foreignLookups++
	}
	s.mu.Unlock()
	if !ok {
		if foreign {
			s.cfg.Logger.Info().Str("order_id", id).Msg("order of another Cobo customer looked up: 404")
		}
		// A foreign order gets exactly the answer of any unknown order. The
		// reference documents no other answer for another customer's order
		// (a 403 would be plausible too, but is not documented).
		writeError(w, http.StatusNotFound, CodeNotFound, "Order not found: "+id)
		return
	}
	writeJSON(w, http.StatusOK, o)
}

type createOrderRequest struct {
	MerchantID        *string `json:"merchant_id"`
	PSPOrderCode      *string `json:"psp_order_code"`
	MerchantOrderCode string  `json:"merchant_order_code"`
	PricingCurrency   string  `json:"pricing_currency"`
	PricingAmount     *string `json:"pricing_amount"`
	PayableCurrency   *string `json:"payable_currency"`
	PayableAmount     *string `json:"payable_amount"`
	FeeAmount         *string `json:"fee_amount"`
	ExpiredIn         *int64  `json:"expired_in"`
	AmountTolerance   string  `json:"amount_tolerance"`
}

// createOrder is POST /v2/payments/orders. The order is Pending with an
// exchange rate of 1 (the sandbox prices stablecoins at par); payable is
// pricing_amount + fee_amount in pricing mode, payable_amount otherwise.
// psp_order_code is unique, as Cobo makes it, and a reuse answers 2040.
func (s *Sim) createOrder(w http.ResponseWriter, r *http.Request) {
	var in createOrderRequest
	if err := decodeStrict(r, &in); err != nil {
		writeError(w, http.StatusBadRequest, CodeInvalidParameter, "Invalid request body: "+err.Error())
		return
	}
	if name := firstMissing("merchant_id", in.MerchantID, "psp_order_code", in.PSPOrderCode, "payable_currency", in.PayableCurrency, "fee_amount", in.FeeAmount); name != "" {
		writeError(w, http.StatusBadRequest, CodeMissingParameter, "Missing parameter: "+name)
		return
	}
	fee, err := decimal.NewFromString(*in.FeeAmount)
	if err != nil || fee.IsNegative() || !plainDecimal.MatchString(*in.FeeAmount) {
		writeError(w, http.StatusBadRequest, CodeInvalidAmount, "Invalid fee_amount")
		return
	}
	pricingMode := in.PricingAmount != nil
	if pricingMode == (in.PayableAmount != nil) || (!pricingMode && in.PricingCurrency != "") || (pricingMode && in.PricingCurrency == "") {
		writeError(w, http.StatusBadRequest, CodeInvalidParameter, "Use either pricing_currency with pricing_amount, or payable_amount")
		return
	}
	var pricing, payable decimal.Decimal
	var ok bool
	if pricingMode {
		if pricing, ok = parseAmount(*in.PricingAmount); !ok {
			writeError(w, http.StatusBadRequest, CodeInvalidAmount, "Invalid pricing_amount")
			return
		}
		payable = pricing.Add(fee)
	} else if payable, ok = parseAmount(*in.PayableAmount); !ok {
		writeError(w, http.StatusBadRequest, CodeInvalidAmount, "Invalid payable_amount")
		return
	}
	expiredIn := int64(1800)
	if in.ExpiredIn != nil {
		if *in.ExpiredIn <= 0 || *in.ExpiredIn > 10800 {
			writeError(w, http.StatusBadRequest, CodeInvalidParameter, "expired_in must be from 1 to 10800 seconds")
			return
		}
		expiredIn = *in.ExpiredIn
	}
	now := time.Now()
	amount := func(d decimal.Decimal) cobo.Amount { return cobo.Amount{NullDecimal: decimal.NewNullDecimal(d)} }
	chain, _, _ := strings.Cut(*in.PayableCurrency, "_")

	s.mu.Lock()
	if _, dup := s.pspCodes[*in.PSPOrderCode]; dup {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, CodeAlreadyExists, "A resource with the same key already exists")
		return
	}
	o := cobo.OrderData{
		OrderID:             fmt.Sprintf("O%s-%s-%d", now.UTC().Format("20060102"), *in.MerchantID, 1001+len(s.orderIDs)),
		MerchantID:          *in.MerchantID,
		PSPOrderCode:        *in.PSPOrderCode,
		MerchantOrderCode:   in.MerchantOrderCode,
		PricingCurrency:     in.PricingCurrency,
		FeeAmount:           amount(fee),
		PayableCurrency:     *in.PayableCurrency,
		ChainID:             chain,
		PayableAmount:       amount(payable),
		ExchangeRate:        amount(decimal.NewFromInt(1)),
		ReceiveAddress:      "0x" + strings.ReplaceAll(newID(), "-", "")[:32] + "00000000",
		Status:              "Pending",
		ReceivedTokenAmount: amount(decimal.Zero),
		ExpiredAt:           cobo.Int64(now.Unix() + expiredIn),
		CreatedTimestamp:    cobo.Int64(now.Unix()),
		UpdatedTimestamp:    cobo.Int64(now.Unix()),
		Transactions:        []cobo.OrderTransaction{},
	}
	if pricingMode {
		o.PricingAmount = amount(pricing)
	}
	if in.AmountTolerance != "" {
		if tol, err := decimal.NewFromString(in.AmountTolerance); err == nil {
			o.AmountTolerance = amount(tol)
		}
	}
	s.orders[o.OrderID] = o
	s.orderIDs = append(s.orderIDs, o.OrderID)
	s.pspCodes[o.PSPOrderCode] = o.OrderID
	s.mu.Unlock()
	s.cfg.Logger.Info().Str("order_id", o.OrderID).Str("merchant_id", o.MerchantID).Msg("order created")
	writeJSON(w, http.StatusCreated, o)
}
