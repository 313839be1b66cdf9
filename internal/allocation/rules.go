package allocation

import (
	"bytes"
	"encoding/json"
	"errors"
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

// MaxSplitIDLength bounds a split's explicit id.
const MaxSplitIDLength = 64

// Split takes a share of a completed order's payment for a destination.
// A rules file may hold at most one split per (MerchantID,
// DestinationAccount) pair.
type Split struct {
	// ID optionally names the split. When set (non-nil) its items' ids
	// derive from it instead of from MerchantID and DestinationAccount
	// (see OnCompleted). It must be non-empty, at most MaxSplitIDLength
	// ASCII letters, digits, '-', '_' or '.', and unique in the file. A
	// JSON null is the same as no id.
	ID                 *string         `json:"id,omitempty"`
	MerchantID         string          `json:"merchant_id"`
	DestinationAccount string          `json:"destination_account"`
	Share              decimal.Decimal `json:"share"`
	Description        string          `json:"description"`
}

// merchantEscaper percent-encodes the two characters that would make a
// derived item id key ambiguous: ':' (the separator) and '%' (the escape).
var merchantEscaper = strings.NewReplacer("%", "%25", ":", "%3A")

// itemKey is what follows "<order_id>:split:" in the ids of the split's
// items: the explicit ID, else the merchant id (escaped) and the
// destination account joined by ':'. The key is a function of the split
// alone, never of its position in the file.
func (s Split) itemKey() string {
	if s.ID != nil {
		return *s.ID
	}
	return merchantEscaper.Replace(s.MerchantID) + ":" + s.DestinationAccount
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
	type pair struct{ merchant, destination string }
	sums := map[string]decimal.Decimal{}
	pairs := map[pair]int{}
	ids := map[string]int{}
	keys := map[string]int{}
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
		if s.ID != nil {
			if err := validateSplitID(*s.ID); err != nil {
				return fmt.Errorf("%s.id: %w", field, err)
			}
			if j, dup := ids[*s.ID]; dup {
				return fmt.Errorf("%s.id: %q already used by splits[%d]", field, *s.ID, j)
			}
			ids[*s.ID] = i
		}
		p := pair{s.MerchantID, s.DestinationAccount}
		if j, dup := pairs[p]; dup {
			return fmt.Errorf("%s: same merchant_id %q and destination_account %q as splits[%d]", field, s.MerchantID, s.DestinationAccount, j)
		}
		pairs[p] = i
		// The encoding of itemKey makes this unreachable after the two
		// checks above; it stays so that no future change to the encoding
		// can give two splits the same item ids.
		key := s.itemKey()
		if j, dup := keys[key]; dup {
			return fmt.Errorf("%s: item ids would collide with splits[%d]'s (%q)", field, j, key)
		}
		keys[key] = i
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

// validateSplitID checks an explicit split id: non-empty, at most
// MaxSplitIDLength characters from [A-Za-z0-9._-].
func validateSplitID(id string) error {
	if id == "" {
		return errors.New("must not be empty when present")
	}
	if len(id) > MaxSplitIDLength {
		return fmt.Errorf("longer than %d characters", MaxSplitIDLength)
	}
	for _, c := range []byte(id) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("%q may hold only letters, digits, '-', '_' and '.'", id)
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
//
// Item ids identify the split, not its position in the file, so that
// reordering the rules file and rebuilding an order's state plans nothing
// under a second id:
//
//   - "<order_id>:split:<id>" for a split with an explicit id;
//   - "<order_id>:split:<merchant_id>:<destination_account>" otherwise,
//     with '%' and ':' in merchant_id written "%25" and "%3A" and the
//     destination verbatim, e.g. "O1:split:M1001:developer" or
//     "O1:split:*:bitgo:<connectionId>".
//
// Within an order the ids are unambiguous: the first ':' after "split:"
// ends the merchant id, and an explicit id holds no ':', so it never
// equals a derived key. Adding, changing or removing a split's id, or
// changing the merchant_id or destination_account of a split without one,
// changes its ids. Items already planned keep the ids stored on their
// order (before this scheme: "<order_id>:split:<index in the
// file>:<destination>"); only new plans use it, so an order planned before
// it and rebuilt from its events is planned again under the new ids.
func (r *Rules) OnCompleted(o *domain.Order) []domain.AllocationItem {
	v := o.View()
	token := v.PayableCurrency
	if token == "" {
		token = v.TokenID
	}
	var items []domain.AllocationItem
	for _, s := range r.Splits {
		if s.MerchantID != AnyMerchant && s.MerchantID != v.MerchantID {
			continue
		}
		item := domain.AllocationItem{
			ID:          o.OrderID + ":split:" + s.itemKey(),
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
		if item.Status == domain.AllocPlanned {
			refuseInvalid(&item, v.ReceivedTokenAmount)
		}
		items = append(items, item)
	}
	return items
}

// refuseInvalid fails an item that must never be sent, with the reason,
// so that one bad item is never part of a batch that the provider would
// reject whole: a transfer to its own source, a non-positive amount, a
// split with more than AmountDecimals decimals, or a split larger than
// what the order received. Late-payment credits keep their exact amount,
// so the decimals rule is for splits only.
func refuseInvalid(it *domain.AllocationItem, received decimal.NullDecimal) {
	var reason string
	switch {
	case it.Source == it.Destination:
		reason = fmt.Sprintf("source and destination are both %q: a transfer to itself", it.Source)
	case !it.Amount.IsPositive():
		reason = fmt.Sprintf("amount %s is not positive", it.Amount)
	case it.Kind == domain.KindSplit && !it.Amount.Equal(it.Amount.Truncate(AmountDecimals)):
		reason = fmt.Sprintf("amount %s has more than %d decimals", it.Amount, AmountDecimals)
	case it.Kind == domain.KindSplit && (!received.Valid || it.Amount.GreaterThan(received.Decimal)):
		reason = fmt.Sprintf("split %s is more than the order received (%s)", it.Amount, received.Decimal)
	default:
		return
	}
	it.Status, it.Reason = domain.AllocFailed, "invalid item, never sent: "+reason
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
	} else {
		refuseInvalid(&item, v.ReceivedTokenAmount)
	}
	return []domain.AllocationItem{item}
}
