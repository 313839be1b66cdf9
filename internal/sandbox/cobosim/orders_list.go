package cobosim

import (
	"cmp"
	"net/http"
	"slices"
	"strings"

	"github.com/paystream/paystream/internal/cobo"
)

// orderList is the body of GET /v2/payments/orders.
type orderList struct {
	Data       []cobo.OrderData `json:"data"`
	Pagination cobo.Pagination  `json:"pagination"`
}

// knownStatuses are the order statuses the statuses filter accepts.
var knownStatuses = []string{cobo.OrderPending, cobo.OrderProcessing, cobo.OrderCompleted, cobo.OrderExpired, cobo.OrderUnderpaid}

// listOrders is GET /v2/payments/orders: the orders the simulator knows
// (registered with PutOrder or created with POST), newest first by
// created_timestamp (then updated_timestamp, then order_id, so the order is
// total), with Cobo's limit/before/after pagination (after=<last order_id
// of a page> is the next, older page) and the filters statuses
// (comma-separated), merchant_id and psp_order_id (the psp_order_code).
// Foreign orders are not ours and are never listed.
func (s *Sim) listOrders(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	page, ok := parsePage(w, q)
	if !ok {
		return
	}
	var statuses []string
	if v := q.Get("statuses"); v != "" {
		for _, st := range strings.Split(v, ",") {
			st = strings.TrimSpace(st)
			if !slices.Contains(knownStatuses, st) {
				writeError(w, http.StatusBadRequest, CodeInvalidParameter, "Invalid parameter: statuses: unknown status "+st)
				return
			}
			statuses = append(statuses, st)
		}
	}
	merchant, psp := q.Get("merchant_id"), q.Get("psp_order_id")
	s.mu.Lock()
	all := make([]cobo.OrderData, 0, len(s.orders))
	for _, o := range s.orders {
		if (statuses == nil || slices.Contains(statuses, o.Status)) && (merchant == "" || o.MerchantID == merchant) && (psp == "" || o.PSPOrderCode == psp) {
			all = append(all, cloneOrder(o))
		}
	}
	s.mu.Unlock()
	slices.SortFunc(all, func(a, b cobo.OrderData) int {
		return cmp.Or(cmp.Compare(b.CreatedTimestamp, a.CreatedTimestamp), cmp.Compare(b.UpdatedTimestamp, a.UpdatedTimestamp), strings.Compare(b.OrderID, a.OrderID))
	})
	data, pg, ok := paginate(all, func(o cobo.OrderData) string { return o.OrderID }, page)
	if !ok {
		writeError(w, http.StatusBadRequest, CodeInvalidParameter, "Unknown pagination cursor")
		return
	}
	writeJSON(w, http.StatusOK, orderList{Data: nonNil(data), Pagination: pg})
}

// cloneOrder copies o so that the answer does not share its transactions.
func cloneOrder(o cobo.OrderData) cobo.OrderData {
	o.Transactions = slices.Clone(o.Transactions)
	return o
}
