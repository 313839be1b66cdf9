// Package allocation decides and carries out fund allocations: the rules
// file and the amounts it yields, and the exactly-once delivery of
// allocation items to Cobo (batched) and BitGo.
package allocation

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/shopspring/decimal"

	"github.com/paystream/paystream/internal/domain"
)

// Late-payment policies.
const (
	// LateHold only records late payments (the default).
	LateHold = "hold"
	// LateCreditMerchant moves each late payment from the developer
	// account, where Cobo credits it, to the order's merchant.
	LateCreditMerchant = "credit_merchant"
)

// AnyMerchant in a split's merchant_id matches every merchant.
const AnyMerchant = "*"

// DeveloperAccount is Cobo's name for the PSP's own account.
const DeveloperAccount = "developer"

// BitGoPrefix in a destination routes the item to a BitGo partner
// connection: "bitgo:<connectionId>".
const BitGoPrefix = "bitgo:"

// AmountDecimals is the precision allocation amounts are rounded down to.
const AmountDecimals = 6

// Split takes a share of a completed order's payment for a destination.
type Split struct {
	MerchantID         string          `json:"merchant_id"`
	DestinationAccount string          `json:"destination_account"`
	Share              decimal.Decimal `json:"share"`
	Description        string          `json:"description"`
}

// Rules is the allocation rules file.
type Rules struct {
	Splits       []Split `json:"splits"`
	LatePayments string  `json:"late_payments"`
}

// LoadRules reads and validates a rules file.
func LoadRules(path string) (*Rules, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	r, err := ParseRules(b)
	if err != nil {
		return nil, fmt.Errorf("rules %s: %w", path, err)
	}
	return r, nil
}

// ParseRules decodes and validates rules; unknown fields are errors, so a
// typo cannot silently disable a split.
func ParseRules(b []byte) (*Rules, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r Rules
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if r.LatePayments == "" {
		r.LatePayments = LateHold
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	return &r, nil
}

func (r *Rules) validate() error {
	if r.LatePayments != LateHold && r.LatePayments != LateCreditMerchant {
		return fmt.Errorf("late_payments: must be %q or %q, got %q", LateHold, LateCreditMerchant, r.LatePayments)
	}
	sums := map[string]decimal.Decimal{}
	for i, s := range r.Splits {
		field := fmt.Sprintf("splits[%d]", i)
		switch {
		case strings.TrimSpace(s.MerchantID) == "":
			return fmt.Errorf("%s.merchant_id: must be a merchant id or %q", field, AnyMerchant)
		case strings.TrimSpace(s.DestinationAccount) == "":
			return fmt.Errorf("%s.destination_account: must not be empty", field)
		case s.DestinationAccount == BitGoPrefix:
			return fmt.Errorf("%s.destination_account: %q needs a connection id", field, BitGoPrefix)
		case !s.Share.IsPositive() || s.Share.GreaterThan(decimal.NewFromInt(1)):
			return fmt.Errorf("%s.share: must be in (0, 1], got %s", field, s.Share)
		case s.DestinationAccount == s.MerchantID:
			return fmt.Errorf("%s.destination_account: must differ from merchant_id", field)
		}
		sums[s.MerchantID] = sums[s.MerchantID].Add(s.Share)
	}
	one := decimal.NewFromInt(1)
	for m, sum := range sums {
		total := sum
		if m != AnyMerchant {
			total = total.Add(sums[AnyMerchant])
		}
		if total.GreaterThan(one) {
			return fmt.Errorf("splits: shares for merchant %q (including %q) sum to %s, more than 1", m, AnyMerchant, total)
		}
	}
	return nil
}

// NeedsMerchantForLate reports whether late payments need the order's
// merchant, which may have to be fetched from Cobo.
func (r *Rules) NeedsMerchantForLate() bool { return r.LatePayments == LateCreditMerchant }

// SplitAmount is min(received, payable) × P × share / (P + fee), rounded
// down to AmountDecimals, where P is the pricing amount, else the order
// amount, else payable − fee. It multiplies first and divides once, exactly.
func SplitAmount(v domain.OrderView, share decimal.Decimal) (decimal.Decimal, error) {
	if !v.ReceivedTokenAmount.Valid || !v.PayableAmount.Valid {
		return decimal.Zero, fmt.Errorf("received_token_amount and payable_amount are required")
	}
	fee := decimal.Zero
	if v.FeeAmount.Valid {
		fee = v.FeeAmount.Decimal
	}
	var p decimal.Decimal
	switch {
	case v.PricingAmount.Valid:
		p = v.PricingAmount.Decimal
	case v.OrderAmount.Valid:
		p = v.OrderAmount.Decimal
	default:
		p = v.PayableAmount.Decimal.Sub(fee)
	}
	den := p.Add(fee)
	if !p.IsPositive() || !den.IsPositive() {
		return decimal.Zero, fmt.Errorf("price %s and price+fee %s must be positive", p, den)
	}
	base := decimal.Min(v.ReceivedTokenAmount.Decimal, v.PayableAmount.Decimal)
	if base.IsNegative() {
		return decimal.Zero, fmt.Errorf("received amount %s is negative", base)
	}
	// QuoRem truncates towards zero, which is rounding down for the
	// non-negative amounts here.
	q, _ := base.Mul(p).Mul(share).QuoRem(den, AmountDecimals)
	return q, nil
}

// UsesBitGo reports whether any split routes to a BitGo connection.
func (r *Rules) UsesBitGo() bool {
	for _, s := range r.Splits {
		if backendFor(s.DestinationAccount) == domain.BackendBitGo {
			return true
		}
	}
	return false
}

func backendFor(destination string) string {
	if strings.HasPrefix(destination, BitGoPrefix) {
		return domain.BackendBitGo
	}
	return domain.BackendCobo
}

// OnCompleted returns the items a first transition to Completed makes:
// one per matching split with a non-zero amount. When an amount cannot be
// computed the item is returned failed with the reason, so an operator
// sees it instead of it vanishing.
func (r *Rules) OnCompleted(o *domain.Order) []domain.AllocationItem {
	v := o.View()
	token := v.PayableCurrency
	if token == "" {
		token = v.TokenID
	}
	var items []domain.AllocationItem
	for i, s := range r.Splits {
		if s.MerchantID != AnyMerchant && s.MerchantID != v.MerchantID {
			continue
		}
		item := domain.AllocationItem{
			ID:          fmt.Sprintf("%s:split:%d:%s", o.OrderID, i, s.DestinationAccount),
			Kind:        domain.KindSplit,
			OrderID:     o.OrderID,
			Backend:     backendFor(s.DestinationAccount),
			TokenID:     token,
			Source:      v.MerchantID,
			Destination: s.DestinationAccount,
			Description: strings.TrimSpace(s.Description + " " + o.OrderID),
			Status:      domain.AllocPlanned,
		}
		amount, err := SplitAmount(v, s.Share)
		switch {
		case err != nil:
			item.Status, item.Reason = domain.AllocFailed, "cannot compute amount: "+err.Error()
		case token == "" || v.MerchantID == "":
			item.Status, item.Reason = domain.AllocFailed, "order has no merchant_id or token"
		case amount.IsZero():
			continue
		}
		item.Amount = amount
		items = append(items, item)
	}
	return items
}

// OnLatePayment returns the item a late payment makes under the
// credit_merchant policy: its exact amount from the developer account to
// the order's merchant.
func (r *Rules) OnLatePayment(o *domain.Order, lp domain.LatePayment) []domain.AllocationItem {
	if r.LatePayments != LateCreditMerchant {
		return nil
	}
	v := o.View()
	token := lp.TokenID
	if token == "" {
		token = v.PayableCurrency
	}
	item := domain.AllocationItem{
		ID:          fmt.Sprintf("%s:late:%s", o.OrderID, lp.TransactionID),
		Kind:        domain.KindLate,
		OrderID:     o.OrderID,
		Backend:     domain.BackendCobo,
		TokenID:     token,
		Amount:      lp.Amount,
		Source:      DeveloperAccount,
		Destination: v.MerchantID,
		Description: fmt.Sprintf("late payment %s for order %s", lp.TransactionID, o.OrderID),
		Status:      domain.AllocPlanned,
	}
	if v.MerchantID == "" || token == "" {
		item.Status, item.Reason = domain.AllocFailed, "order merchant_id or token unknown"
	}
	return []domain.AllocationItem{item}
}
