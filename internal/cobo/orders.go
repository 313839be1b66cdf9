package cobo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Pay-in order statuses as Cobo spells them.
const (
	OrderPending    = "Pending"
	OrderProcessing = "Processing"
	OrderCompleted  = "Completed"
	OrderExpired    = "Expired"
	OrderUnderpaid  = "Underpaid"
)

// FinalOrderStatuses are the terminal statuses, the value of
// ListOrdersRequest.Statuses that lists only finished orders.
var FinalOrderStatuses = []string{OrderCompleted, OrderExpired, OrderUnderpaid}

// MaxListLimit is the largest page Cobo's list endpoints document.
const MaxListLimit = 50

// ListOrdersRequest selects one page of GET /payments/orders. The zero
// value asks for the newest page with Cobo's default size.
type ListOrdersRequest struct {
	// Limit is the page size, 1 to MaxListLimit; 0 leaves Cobo's default
	// (10).
	Limit int
	// After is the order_id of the last order of a page: the answer is the
	// next, older page. Before is the order_id of the first order of a
	// page: the newer page before it. At most one may be set.
	After, Before string
	// Statuses keeps only orders in these statuses (sent comma-separated
	// as statuses).
	Statuses []string
	// MerchantID keeps only one merchant's orders.
	MerchantID string
	// PSPOrderCode keeps only the order with this psp_order_code; Cobo
	// names the query parameter psp_order_id.
	PSPOrderCode string
}

// Validate reports the first invalid field by name.
func (r ListOrdersRequest) Validate() error {
	switch {
	case r.Limit < 0 || r.Limit > MaxListLimit:
		return fmt.Errorf("Limit must be from 0 to %d, got %d", MaxListLimit, r.Limit)
	case r.After != "" && r.Before != "":
		return errors.New("After and Before exclude each other")
	}
	for i, s := range r.Statuses {
		if s == "" || strings.Contains(s, ",") {
			return fmt.Errorf("Statuses[%d] must be a status without commas, got %q", i, s)
		}
	}
	return nil
}

func (r ListOrdersRequest) query() url.Values {
	q := url.Values{}
	if r.Limit > 0 {
		q.Set("limit", strconv.Itoa(r.Limit))
	}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("after", r.After)
	set("before", r.Before)
	set("statuses", strings.Join(r.Statuses, ","))
	set("merchant_id", r.MerchantID)
	set("psp_order_id", r.PSPOrderCode)
	return q
}

// OrderList is one page of GET /payments/orders, newest first, as Cobo's
// list endpoints answer: {data: [Order], pagination: {before, after,
// total_count}}. A null or absent data is an empty page, and a missing
// pagination block zero cursors.
type OrderList struct {
	// Orders are the page's orders that decode.
	Orders []OrderData
	// Invalid are the page's items that do not decode as an order (or
	// have no order_id), with why; they do not spoil the rest of the page.
	Invalid []InvalidOrder
	// Pagination is Cobo's block as answered.
	Pagination Pagination
	// items is how many items data held; last is the order_id of the last
	// one, decodable or not ("" when it has none).
	items int
	last  string
}

// InvalidOrder is an item of a list answer that is not a usable order.
type InvalidOrder struct {
	// OrderID is the item's order_id when it has a string one.
	OrderID string
	Err     error
}

// Items is how many items the page held, invalid ones included.
func (l OrderList) Items() int { return l.items }

// Next returns the After of the next, older page, or "" when this page
// is the last one: Cobo's pagination.after when it gives one; otherwise
// the page's last order_id when the page is full (limit items), since
// after=<last order_id of a page> is how the next page is asked for and
// whether Cobo fills in after on every page is not documented.
func (l OrderList) Next(limit int) string {
	if l.Pagination.After != "" {
		return l.Pagination.After
	}
	if limit > 0 && l.items >= limit {
		return l.last
	}
	return ""
}

// UnmarshalJSON implements json.Unmarshaler; see OrderList.
func (l *OrderList) UnmarshalJSON(b []byte) error {
	var raw struct {
		Data       json.RawMessage `json:"data"`
		Pagination *Pagination     `json:"pagination"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("order list: %w", err)
	}
	*l = OrderList{}
	if raw.Pagination != nil {
		l.Pagination = *raw.Pagination
	}
	data := bytes.TrimSpace(raw.Data)
	if len(data) == 0 || string(data) == "null" {
		return nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(data, &items); err != nil {
		return fmt.Errorf("order list: data is not an array: %w", err)
	}
	l.items = len(items)
	for i, item := range items {
		var id struct {
			OrderID json.RawMessage `json:"order_id"`
		}
		_ = json.Unmarshal(item, &id)
		orderID, _ := nonEmptyString(id.OrderID)
		if i == len(items)-1 {
			l.last = orderID
		}
		var o OrderData
		err := json.Unmarshal(item, &o)
		if err == nil && o.OrderID == "" {
			err = errors.New("order_id is missing or empty")
		}
		if err != nil {
			l.Invalid = append(l.Invalid, InvalidOrder{OrderID: orderID, Err: fmt.Errorf("data[%d]: %w", i, err)})
			continue
		}
		l.Orders = append(l.Orders, o)
	}
	return nil
}

// ListOrders returns one page of pay-in orders, newest first
// (GET /payments/orders), signed like every call. Transient failures are
// retried; a 4xx is returned as an *APIError.
func (c *Client) ListOrders(ctx context.Context, req ListOrdersRequest) (OrderList, error) {
	if err := req.Validate(); err != nil {
		return OrderList{}, fmt.Errorf("list orders: %w", err)
	}
	var out OrderList
	if err := c.do(ctx, "list_orders", http.MethodGet, "/payments/orders", req.query(), nil, &out); err != nil {
		return OrderList{}, fmt.Errorf("list orders (after %q): %w", req.After, err)
	}
	return out, nil
}
