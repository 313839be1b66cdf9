package cobo

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/shopspring/decimal"
)

// Webhook event types paystream acts on.
const (
	EventOrderStatusUpdated   = "payment.order.status.updated"
	EventLegacyStatusUpdated  = "payment.status.updated"
	EventOrderUpdated         = "payment.order.updated"
	EventTransactionLate      = "payment.transaction.late"
	EventTransactionCompleted = "payment.transaction.completed"
)

// NoticeLatePaymentReceived is the payment.order.updated notice_type that
// reports a late deposit.
const NoticeLatePaymentReceived = "LatePaymentReceived"

// ErrMalformedEvent means a webhook body is not a usable Cobo event.
var ErrMalformedEvent = errors.New("malformed event")

// Envelope is the part of Cobo's webhook envelope paystream relies on. Data
// is kept raw; handlers decode the payload they need.
type Envelope struct {
	EventID          string          `json:"event_id"`
	Type             string          `json:"type"`
	CreatedTimestamp Int64           `json:"created_timestamp"`
	Data             json.RawMessage `json:"data"`
	// DataType and OrderID are lifted from Data when present.
	DataType string `json:"-"`
	OrderID  string `json:"-"`
}

// ParseEnvelope decodes a webhook body. It fails, wrapping ErrMalformedEvent,
// when the body is not a JSON object or lacks event_id, type or an object
// data. Unknown fields and unknown types are accepted.
func ParseEnvelope(body []byte) (Envelope, error) {
	env, _, err := parseEnvelope(body, false)
	return env, err
}

// ParseEnvelopeData is ParseEnvelope for a reader of the event's data
// (Delivery.Decoded): for a type this package decodes (the order status
// events into *OrderData, payment.order.updated into *OrderUpdateData, the
// transaction events into *TransactionData) data is decoded into it in the
// pass that lifts data_type and order_id, which then come from it. decoded
// is nil for other types, and when data does not decode into its type: the
// reader decodes Data itself then, and meets the error.
func ParseEnvelopeData(body []byte) (env Envelope, decoded any, err error) {
	return parseEnvelope(body, true)
}

func parseEnvelope(body []byte, typed bool) (Envelope, any, error) {
	var raw struct {
		EventID          json.RawMessage `json:"event_id"`
		Type             json.RawMessage `json:"type"`
		CreatedTimestamp json.RawMessage `json:"created_timestamp"`
		Data             json.RawMessage `json:"data"`
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Envelope{}, nil, fmt.Errorf("%w: body is not a JSON object", ErrMalformedEvent)
	}
	if err := json.Unmarshal(trimmed, &raw); err != nil {
		return Envelope{}, nil, fmt.Errorf("%w: body is not valid JSON: %v", ErrMalformedEvent, err)
	}
	var env Envelope
	var ok bool
	if env.EventID, ok = nonEmptyString(raw.EventID); !ok {
		return Envelope{}, nil, fmt.Errorf("%w: event_id is missing or not a non-empty string", ErrMalformedEvent)
	}
	if env.Type, ok = nonEmptyString(raw.Type); !ok {
		return Envelope{}, nil, fmt.Errorf("%w: type is missing or not a non-empty string", ErrMalformedEvent)
	}
	data := bytes.TrimSpace(raw.Data)
	if len(data) == 0 || data[0] != '{' {
		return Envelope{}, nil, fmt.Errorf("%w: data is missing or not an object", ErrMalformedEvent)
	}
	env.Data = data
	// created_timestamp is informational; a malformed one is not fatal.
	_ = env.CreatedTimestamp.UnmarshalJSON(raw.CreatedTimestamp)

	if typed {
		// The same bytes through the same decoder as the reader's own
		// decode would be: what it lifts is what the routing fields give
		// (a string or null decodes alike, anything else fails here and
		// is left to the routing decode below).
		if v := dataFor(env.Type); v != nil && json.Unmarshal(data, v) == nil {
			env.DataType, env.OrderID = routingOf(v)
			return env, v, nil
		}
	}
	// A struct of the two routing fields, not a map of all of them: this
	// runs on every webhook, and a map allocates every key and value.
	var fields struct {
		DataType json.RawMessage `json:"data_type"`
		OrderID  json.RawMessage `json:"order_id"`
	}
	if err := json.Unmarshal(data, &fields); err != nil {
		return Envelope{}, nil, fmt.Errorf("%w: data: %v", ErrMalformedEvent, err)
	}
	env.DataType, _ = nonEmptyString(fields.DataType)
	env.OrderID, _ = nonEmptyString(fields.OrderID)
	return env, nil, nil
}

// dataFor returns a new value of the type the data of eventType decodes
// into, or nil.
func dataFor(eventType string) any {
	switch eventType {
	case EventOrderStatusUpdated, EventLegacyStatusUpdated:
		return new(OrderData)
	case EventOrderUpdated:
		return new(OrderUpdateData)
	case EventTransactionLate, EventTransactionCompleted:
		return new(TransactionData)
	}
	return nil
}

// routingOf returns the data_type and order_id of decoded data.
func routingOf(v any) (dataType, orderID string) {
	switch d := v.(type) {
	case *OrderData:
		return d.DataType, d.OrderID
	case *OrderUpdateData:
		return d.DataType, d.OrderID
	case *TransactionData:
		return d.DataType, d.OrderID
	}
	return "", ""
}

// nonEmptyString decodes raw, one JSON value, when it is a non-empty
// string.
func nonEmptyString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	// Ids are plain ASCII: between the quotes of such a string, with no
	// escape and no control character, is exactly what json.Unmarshal
	// would decode, without its cost on every event.
	if n := len(raw); n > 2 && raw[n-1] == '"' && plainASCII(raw[1:n-1]) {
		return string(raw[1 : n-1]), true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil || s == "" {
		return "", false
	}
	return s, true
}

// plainASCII reports whether b holds only printable ASCII other than '"'
// and '\\'.
func plainASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// MaxAmountDigits bounds an Amount from the wire: at most this many
// significant digits (from the first non-zero digit to the last digit
// written, so "0.000001" has 1 and "1.50" has 3) and at most this many
// digits after the decimal point. 36 holds 18 integer and 18 fractional
// digits, more than any token amount Cobo sends; it keeps an attacker's
// thousand-digit amount out of the decimal arithmetic.
const MaxAmountDigits = 36

// ErrInvalidAmount means an amount from the wire is not a plain
// non-negative decimal within MaxAmountDigits.
var ErrInvalidAmount = errors.New("invalid amount")

// Amount is a decimal amount from the wire. It accepts a JSON string or
// number holding a plain non-negative decimal, digits with an optional
// '.' and fraction ("102.5", 102.5, "0", "0.000000"), with at most
// MaxAmountDigits significant digits and MaxAmountDigits decimals; it
// treats null, "" and absence as not set. Everything else fails with
// ErrInvalidAmount: a sign ('-', '+', U+2212), exponent notation, NaN and
// Infinity, hex, whitespace, and longer amounts. Every amount paystream
// reads from Cobo (prices, fees, payable, received, order and transaction
// amounts) is non-negative. It never goes through a float.
type Amount struct {
	decimal.NullDecimal
}

// UnmarshalJSON implements json.Unmarshaler. Its errors wrap
// ErrInvalidAmount (or are JSON syntax errors) and echo at most
// amountEchoBytes of the input.
func (a *Amount) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || string(b) == "null" || string(b) == `""` {
		a.NullDecimal = decimal.NullDecimal{}
		return nil
	}
	s := string(b)
	if b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("amount %s: %w", clipForError(string(b)), err)
		}
	}
	if reason := plainDecimalProblem(s); reason != "" {
		return fmt.Errorf("%w %s: %s", ErrInvalidAmount, clipForError(s), reason)
	}
	d, err := decimal.NewFromString(s)
	if err != nil {
		return fmt.Errorf("%w %s: %v", ErrInvalidAmount, clipForError(s), err)
	}
	a.NullDecimal = decimal.NewNullDecimal(d)
	return nil
}

// amountEchoBytes bounds how much of a refused amount an error repeats.
const amountEchoBytes = 40

// clipForError quotes s for an error message, cut to amountEchoBytes (on a
// rune boundary) with its full length when longer.
func clipForError(s string) string {
	if len(s) <= amountEchoBytes {
		return strconv.Quote(s)
	}
	cut := amountEchoBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(s[:cut]), len(s))
}

// plainDecimalProblem returns why s is not a plain decimal Amount accepts,
// or "" when it is.
func plainDecimalProblem(s string) string {
	switch {
	case s == "":
		return "empty"
	case s[0] == '-':
		return "negative (amounts are never negative)"
	case strings.HasPrefix(s, "\u2212"):
		return "negative, with a Unicode minus sign U+2212 (amounts are never negative)"
	case s[0] == '+':
		return "leading '+'"
	case strings.IndexFunc(s, unicode.IsSpace) >= 0:
		return "whitespace inside the amount"
	}
	switch strings.ToLower(s) {
	case "nan", "inf", "infinity":
		return "not a number"
	}
	if len(s) > 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		return "hex notation"
	}
	intDigits, fracDigits, significant := 0, 0, 0
	seenPoint := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9':
			if seenPoint {
				fracDigits++
			} else {
				intDigits++
			}
			if significant > 0 || c != '0' {
				significant++
			}
		case c == '.' && !seenPoint:
			if intDigits == 0 {
				return "no digit before '.'"
			}
			seenPoint = true
		case (c == 'e' || c == 'E') && intDigits > 0 && (!seenPoint || fracDigits > 0):
			return "exponent notation"
		default:
			r, _ := utf8.DecodeRuneInString(s[i:])
			return fmt.Sprintf("unexpected %q at byte %d: not a plain decimal", r, i)
		}
	}
	switch {
	case seenPoint && fracDigits == 0:
		return "no digit after '.'"
	case significant > MaxAmountDigits:
		return fmt.Sprintf("%d significant digits, more than %d", significant, MaxAmountDigits)
	case fracDigits > MaxAmountDigits:
		return fmt.Sprintf("%d digits after the decimal point, more than %d", fracDigits, MaxAmountDigits)
	}
	return ""
}

// MarshalJSON implements json.Marshaler: a string, or null when not set.
func (a Amount) MarshalJSON() ([]byte, error) {
	if !a.Valid {
		return []byte("null"), nil
	}
	return json.Marshal(a.Decimal.String())
}

// Int64 is an integer from the wire that may arrive as a number or a string.
type Int64 int64

// UnmarshalJSON implements json.Unmarshaler.
func (n *Int64) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || string(b) == "null" {
		*n = 0
		return nil
	}
	if b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		b = []byte(s)
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("integer %q: %w", b, err)
	}
	*n = Int64(v)
	return nil
}

// Time reads n as Cobo's timestamps are documented, in seconds; a value
// only milliseconds make sense of (after the year 5138 in seconds) is read
// as milliseconds, as Cobo sends some. Zero or less is the zero time: not
// given.
func (n Int64) Time() time.Time {
	switch {
	case n <= 0:
		return time.Time{}
	case n > 100_000_000_000:
		return time.UnixMilli(int64(n))
	}
	return time.Unix(int64(n), 0)
}

// OrderData is the data of payment.order.status.updated (data_type
// PaymentOrder), which is also the Order returned by GET /payments/orders/{id}.
type OrderData struct {
	DataType            string `json:"data_type,omitempty"`
	OrderID             string `json:"order_id"`
	MerchantID          string `json:"merchant_id,omitempty"`
	PSPOrderCode        string `json:"psp_order_code,omitempty"`
	MerchantOrderCode   string `json:"merchant_order_code,omitempty"`
	PricingCurrency     string `json:"pricing_currency,omitempty"`
	PricingAmount       Amount `json:"pricing_amount"`
	FeeAmount           Amount `json:"fee_amount"`
	PayableCurrency     string `json:"payable_currency,omitempty"`
	ChainID             string `json:"chain_id,omitempty"`
	PayableAmount       Amount `json:"payable_amount"`
	ExchangeRate        Amount `json:"exchange_rate"`
	AmountTolerance     Amount `json:"amount_tolerance"`
	ReceiveAddress      string `json:"receive_address,omitempty"`
	Status              string `json:"status"`
	ReceivedTokenAmount Amount `json:"received_token_amount"`
	ExpiredAt           Int64  `json:"expired_at,omitempty"`
	CreatedTimestamp    Int64  `json:"created_timestamp,omitempty"`
	UpdatedTimestamp    Int64  `json:"updated_timestamp,omitempty"`
	// Deprecated fields still sent by Cobo and used as fallbacks.
	Currency    string `json:"currency,omitempty"`
	OrderAmount Amount `json:"order_amount"`
	TokenID     string `json:"token_id,omitempty"`

	Transactions []OrderTransaction `json:"transactions,omitempty"`
}

// OrderTransaction is an item of Order.transactions.
type OrderTransaction struct {
	TxID             string `json:"tx_id"`
	TxHash           string `json:"tx_hash,omitempty"`
	TokenID          string `json:"token_id,omitempty"`
	FromAddress      string `json:"from_address,omitempty"`
	ToAddress        string `json:"to_address,omitempty"`
	Amount           Amount `json:"amount"`
	Status           string `json:"status"`
	CreatedTimestamp Int64  `json:"created_timestamp,omitempty"`
	UpdatedTimestamp Int64  `json:"updated_timestamp,omitempty"`
	// IsLate is Cobo's word on whether the deposit came after the order
	// was final, when it gives one: the payment.order.updated webhook's
	// transactions carry is_late, whether the order API's do is not
	// documented, so nil means "not said".
	IsLate *bool `json:"is_late,omitempty"`
}

// TxStatusCompleted is the TransactionStatus of a deposit that passed
// screening and was credited.
const TxStatusCompleted = "Completed"

// Completed reports whether the transaction is a credited deposit.
func (t OrderTransaction) Completed() bool { return strings.EqualFold(t.Status, TxStatusCompleted) }

// TokenAmount is the {amount, token_id, chain_id} object of standard events.
type TokenAmount struct {
	Amount  Amount `json:"amount"`
	TokenID string `json:"token_id,omitempty"`
	ChainID string `json:"chain_id,omitempty"`
}

// OrderUpdateData is the data of payment.order.updated (data_type
// PaymentOrderUpdate). Its amounts are truncated to two decimals.
type OrderUpdateData struct {
	DataType          string               `json:"data_type,omitempty"`
	OrderID           string               `json:"order_id"`
	PSPOrderCode      string               `json:"psp_order_code,omitempty"`
	MerchantID        string               `json:"merchant_id,omitempty"`
	MerchantOrderCode string               `json:"merchant_order_code,omitempty"`
	Status            string               `json:"status"`
	NoticeType        string               `json:"notice_type,omitempty"`
	ReceiveAddress    string               `json:"receive_address,omitempty"`
	ExpiredAt         Int64                `json:"expired_at,omitempty"`
	RequestedAmount   *TokenAmount         `json:"requested_amount,omitempty"`
	CreditedAmount    *TokenAmount         `json:"credited_amount,omitempty"`
	OutstandingAmount *TokenAmount         `json:"outstanding_amount,omitempty"`
	Transactions      []OrderUpdateTxEntry `json:"transactions,omitempty"`
	CreatedTimestamp  Int64                `json:"created_timestamp,omitempty"`
	UpdatedTimestamp  Int64                `json:"updated_timestamp,omitempty"`
}

// OrderUpdateTxEntry is a transaction inside payment.order.updated.
type OrderUpdateTxEntry struct {
	TransactionID string       `json:"transaction_id"`
	TxHash        string       `json:"tx_hash,omitempty"`
	Amount        *TokenAmount `json:"amount,omitempty"`
	SourceAddress string       `json:"source_address,omitempty"`
	IsLate        bool         `json:"is_late"`
	Status        string       `json:"status,omitempty"`
}

// TransactionData is the data of payment.transaction.* events (data_type
// PaymentTransaction). The received amount is Destination.Amount.
type TransactionData struct {
	DataType      string `json:"data_type,omitempty"`
	TransactionID string `json:"transaction_id"`
	WalletID      string `json:"wallet_id,omitempty"`
	Status        string `json:"status,omitempty"`
	ChainID       string `json:"chain_id,omitempty"`
	TokenID       string `json:"token_id,omitempty"`
	TxHash        string `json:"transaction_hash,omitempty"`
	Source        *struct {
		SourceType string   `json:"source_type,omitempty"`
		Addresses  []string `json:"addresses,omitempty"`
	} `json:"source,omitempty"`
	Destination *struct {
		DestinationType string `json:"destination_type,omitempty"`
		Address         string `json:"address,omitempty"`
		Amount          Amount `json:"amount"`
	} `json:"destination,omitempty"`
	AcquiringType    string `json:"acquiring_type,omitempty"`
	OrderID          string `json:"order_id,omitempty"`
	PSPOrderCode     string `json:"psp_order_code,omitempty"`
	CreatedTimestamp Int64  `json:"created_timestamp,omitempty"`
	UpdatedTimestamp Int64  `json:"updated_timestamp,omitempty"`
}

// DestinationAmount returns destination.amount, or not-set.
func (t *TransactionData) DestinationAmount() decimal.NullDecimal {
	if t.Destination == nil {
		return decimal.NullDecimal{}
	}
	return t.Destination.Amount.NullDecimal
}

// Delivery is one verified webhook delivery: the parsed envelope plus
// everything needed to verify it again and replay it byte for byte.
type Delivery struct {
	Envelope
	// Body is the raw request body exactly as received.
	Body []byte
	// Timestamp and Signature are the Biz-Timestamp and Biz-Resp-Signature
	// header values exactly as received.
	Timestamp string
	Signature string
	// ReceivedAt is when ingest received the request.
	ReceivedAt time.Time
	// Decoded, when set, is Data decoded into this package's type for the
	// event's Type, as ParseEnvelopeData returns it: a reader of the data
	// uses it instead of decoding Data again. Nil: decode Data.
	Decoded any
}
