package payer

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/shopspring/decimal"

	"github.com/paystream/paystream/internal/cobo"
)

// Outcomes and their shares (percent) of orders. Overpayment is a Completed
// order; Cobo has no Overpaid status.
const (
	statusPending   = "Pending"
	statusCompleted = "Completed"
	statusExpired   = "Expired"
	statusUnderpaid = "Underpaid"

	shareCompleted = 74
	shareUnderpaid = 13 // the rest expire

	// underscoreShare is the percentage of deliveries using the
	// Biz_Timestamp / Biz_Resp_Signature header spellings.
	underscoreShare = 20
	// dustMicros is Cobo's dust threshold (0.05 USDT) in micro-units:
	// deposits at or below it are never credited nor reported.
	dustMicros = 50_000
	// expiresIn is each order's life in seconds, before Expired/Underpaid.
	expiresIn = 1800
)

// tokens the payer pays with, and their chains.
var tokens = []struct{ id, chain string }{{"ETH_USDT", "ETH"}, {"TRON_USDT", "TRON"}}

// plannedOrder is one order's whole story, computed up front from the seed
// so that a run is reproducible whatever the scheduling.
type plannedOrder struct {
	orderID    string
	foreign    bool // another Cobo customer's order (planForeignOrder)
	status     string
	final      orderWire // the order after its final status, for the Sim
	events     int       // distinct events
	late       bool
	lateTx     *orderTx // the late deposit as Cobo's order API lists it
	deliveries []delivery
}

// delivery is one POST of one event. A resend carries the same event_id and
// the same body.
type delivery struct {
	eventID    string
	eventType  string
	orderID    string
	body       []byte
	underscore bool
	resend     bool
}

type deposit struct {
	txID, hash, from string
	micros           int64
	at               int64 // seconds
	coboID           string
	block            int64
}

// orderWire is the data of payment.order.status.updated (data_type
// PaymentOrder), which is also Cobo's Order object. Amounts are strings as
// Cobo sends them.
type orderWire struct {
	DataType            string    `json:"data_type"`
	OrderID             string    `json:"order_id"`
	MerchantID          string    `json:"merchant_id"`
	MerchantOrderCode   string    `json:"merchant_order_code"`
	PSPOrderCode        string    `json:"psp_order_code"`
	PricingCurrency     string    `json:"pricing_currency"`
	PricingAmount       string    `json:"pricing_amount"`
	FeeAmount           string    `json:"fee_amount"`
	PayableCurrency     string    `json:"payable_currency"`
	ChainID             string    `json:"chain_id"`
	PayableAmount       string    `json:"payable_amount"`
	ExchangeRate        string    `json:"exchange_rate"`
	AmountTolerance     string    `json:"amount_tolerance"`
	ReceiveAddress      string    `json:"receive_address"`
	Status              string    `json:"status"`
	ReceivedTokenAmount string    `json:"received_token_amount"`
	ExpiredAt           int64     `json:"expired_at"`
	CreatedTimestamp    int64     `json:"created_timestamp"`
	UpdatedTimestamp    int64     `json:"updated_timestamp"`
	Transactions        []orderTx `json:"transactions"`
	SettlementStatus    *string   `json:"settlement_status"`
	TokenID             string    `json:"token_id"` // deprecated, still sent
}

// orderTx is an item of Order.transactions; its timestamps are in ms.
type orderTx struct {
	TxID             string `json:"tx_id"`
	TxHash           string `json:"tx_hash"`
	TokenID          string `json:"token_id"`
	FromAddress      string `json:"from_address"`
	ToAddress        string `json:"to_address"`
	Amount           string `json:"amount"`
	Status           string `json:"status"`
	CreatedTimestamp int64  `json:"created_timestamp"`
	UpdatedTimestamp int64  `json:"updated_timestamp"`
	// IsLate is set only in the order API's copy (apiOrder): whether Cobo's
	// order API says is_late is not documented, and the webhooks' orders
	// are sent as before.
	IsLate *bool `json:"is_late,omitempty"`
}

// txWire is the data of payment.transaction.* (data_type
// PaymentTransaction): a WaaS Transaction plus payment fields. Its
// timestamps are in ms, and the received amount is destination.amount.
type txWire struct {
	DataType            string    `json:"data_type"`
	TransactionID       string    `json:"transaction_id"`
	CoboID              string    `json:"cobo_id"`
	RequestID           *string   `json:"request_id"`
	WalletID            string    `json:"wallet_id"`
	Type                string    `json:"type"`
	Status              string    `json:"status"`
	ChainID             string    `json:"chain_id"`
	TokenID             string    `json:"token_id"`
	AssetID             string    `json:"asset_id"`
	Source              txSource  `json:"source"`
	Destination         txDest    `json:"destination"`
	InitiatorType       string    `json:"initiator_type"`
	ConfirmedNum        int       `json:"confirmed_num"`
	ConfirmingThreshold int       `json:"confirming_threshold"`
	TransactionHash     string    `json:"transaction_hash"`
	BlockInfo           blockInfo `json:"block_info"`
	IsLoop              bool      `json:"is_loop"`
	CreatedTimestamp    int64     `json:"created_timestamp"`
	UpdatedTimestamp    int64     `json:"updated_timestamp"`
	AcquiringType       string    `json:"acquiring_type"`
	OrderID             string    `json:"order_id"`
	PSPOrderCode        string    `json:"psp_order_code"`
}

type txSource struct {
	SourceType string   `json:"source_type"`
	Addresses  []string `json:"addresses"`
}

type txDest struct {
	DestinationType string `json:"destination_type"`
	WalletID        string `json:"wallet_id"`
	WalletType      string `json:"wallet_type"`
	Address         string `json:"address"`
	Amount          string `json:"amount"`
}

type blockInfo struct {
	BlockNumber    int64  `json:"block_number"`
	BlockTimestamp int64  `json:"block_timestamp"`
	BlockHash      string `json:"block_hash"`
}

// updateWire is the data of payment.order.updated (data_type
// PaymentOrderUpdate). Amounts are truncated to two decimals with trailing
// zeros stripped; fields that do not apply are null.
type updateWire struct {
	DataType          string       `json:"data_type"`
	OrderID           string       `json:"order_id"`
	PSPOrderCode      string       `json:"psp_order_code"`
	MerchantID        string       `json:"merchant_id"`
	MerchantOrderCode string       `json:"merchant_order_code"`
	Status            string       `json:"status"`
	NoticeType        *string      `json:"notice_type"`
	ReceiveAddress    string       `json:"receive_address"`
	ExpiredAt         int64        `json:"expired_at"`
	RequestedAmount   *tokenAmount `json:"requested_amount"`
	CreditedAmount    *tokenAmount `json:"credited_amount"`
	OutstandingAmount *tokenAmount `json:"outstanding_amount"`
	Transactions      []updateTx   `json:"transactions"`
	CreatedTimestamp  int64        `json:"created_timestamp"`
	UpdatedTimestamp  int64        `json:"updated_timestamp"`
}

type tokenAmount struct {
	Amount  string `json:"amount"`
	TokenID string `json:"token_id"`
	ChainID string `json:"chain_id"`
}

type updateTx struct {
	TransactionID string      `json:"transaction_id"`
	TxHash        string      `json:"tx_hash"`
	Amount        tokenAmount `json:"amount"`
	SourceAddress string      `json:"source_address"`
	IsLate        bool        `json:"is_late"`
	Status        string      `json:"status"`
	ScreeningMode *string     `json:"screening_mode"`
	Message       *string     `json:"message"`
	FailedReason  *struct{}   `json:"failed_reason"`
}

type envelope struct {
	EventID          string `json:"event_id"`
	URL              string `json:"url"`
	CreatedTimestamp int64  `json:"created_timestamp"`
	Type             string `json:"type"`
	Data             any    `json:"data"`
	Status           string `json:"status"`
}

// Salts of the orders' random streams: our orders' and the foreign
// customer's are independent, so adding foreign orders changes none of ours.
const (
	saltOrder        = "paystream-sandbox-payer/order/"
	saltForeignOrder = "paystream-sandbox-payer/foreign-order/"
)

// orderRNG returns the order's own random stream: it depends only on the
// salt, the seed and the order's index, so concurrency cannot change any
// order.
func orderRNG(salt string, seed uint64, index int) *rand.Rand {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], seed)
	binary.BigEndian.PutUint64(b[8:], uint64(index))
	sum := sha256.Sum256(append([]byte(salt), b[:]...))
	return rand.New(rand.NewPCG(binary.BigEndian.Uint64(sum[:8]), binary.BigEndian.Uint64(sum[8:16])))
}

// runNumber is a 5-digit number derived from the seed that goes into order
// ids, so that runs with different seeds on the same day do not reuse ids.
func runNumber(seed uint64) int {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seed)
	sum := sha256.Sum256(append([]byte("paystream-sandbox-payer/run/"), b[:]...))
	return 10000 + int(binary.BigEndian.Uint64(sum[:8])%90000)
}

// foreignRunNumber is the run number in the foreign customer's order ids:
// derived from the seed like runNumber but never equal to run, so a
// foreign order id never equals one of ours (the merchant and index parts
// may coincide, the run part does not).
func foreignRunNumber(seed uint64, run int) int {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seed)
	sum := sha256.Sum256(append([]byte("paystream-sandbox-payer/foreign-run/"), b[:]...))
	n := 10000 + int(binary.BigEndian.Uint64(sum[:8])%90000)
	if n == run {
		n = 10000 + (n-10000+1)%90000
	}
	return n
}

// uuidFrom draws a version-4-shaped UUID from r.
func uuidFrom(r *rand.Rand) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], r.Uint64())
	binary.BigEndian.PutUint64(b[8:], r.Uint64())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func hexFrom(r *rand.Rand, n int) string {
	b := make([]byte, (n+1)/2)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return hex.EncodeToString(b)[:n]
}

const base58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

// address draws a plausible address for chain: 0x+40 hex, or a TRON T...
func address(r *rand.Rand, chain string) string {
	if chain == "TRON" {
		b := []byte{'T'}
		for range 33 {
			b = append(b, base58[r.IntN(len(base58))])
		}
		return string(b)
	}
	return "0x" + hexFrom(r, 40)
}

func txHash(r *rand.Rand, chain string) string {
	if chain == "TRON" {
		return hexFrom(r, 64)
	}
	return "0x" + hexFrom(r, 64)
}

func micros(m int64) decimal.Decimal { return decimal.New(m, -6) }

// truncated2 is an amount as payment.order.updated sends it: truncated to
// two decimals, trailing zeros stripped.
func truncated2(d decimal.Decimal) string { return d.Truncate(2).String() }

// planOrder computes our order index's events and their delivery sequence.
// Every random draw comes from the order's own stream, in a fixed order.
func planOrder(cfg Config, run int, start time.Time, index int) (plannedOrder, error) {
	return plan(cfg, orderRNG(saltOrder, cfg.Seed, index), run, start, index, false)
}

// planForeignOrder computes foreign order index's story: an order of
// another Cobo customer, with our merchant ids (merchant ids are per
// customer, so they collide) and webhooks shaped and signed like ours. It
// always ends Completed with a received amount, and every second one (the
// first included) gets a late deposit, so that allocation rules would plan
// splits and late-payment credits for it. Its random stream, run number
// and so its ids differ from our orders'.
func planForeignOrder(cfg Config, run int, start time.Time, index int) (plannedOrder, error) {
	r := orderRNG(saltForeignOrder, cfg.Seed, index)
	return plan(cfg, r, foreignRunNumber(cfg.Seed, run), start, index, true)
}

// plan computes an order's story from r. A foreign order draws what ours
// draw, in the same sequence, but its status is forced to Completed and
// its late deposit to every second index.
func plan(cfg Config, r *rand.Rand, run int, start time.Time, index int, foreign bool) (plannedOrder, error) {
	merchant := cfg.Merchants[r.IntN(len(cfg.Merchants))]
	tok := tokens[r.IntN(len(tokens))]
	orderID := fmt.Sprintf("O%s-%s-%d%04d", start.UTC().Format("20060102"), merchant, run, index+1)

	// Amounts in integer cents and micro-units; never a float.
	pricing := decimal.New(int64(1000+r.IntN(49001)), -2) // 10.00 to 500.00
	fee := pricing.Mul(decimal.New(2, -2)).Round(2)       // 2%
	if fee.LessThan(decimal.New(10, -2)) {
		fee = decimal.New(10, -2)
	}
	payable := pricing.Add(fee)
	payableMicros := payable.Shift(6).IntPart()
	tolerance := decimal.Zero
	if r.IntN(2) == 0 {
		tolerance = decimal.New(5, -1) // 0.5 token
	}

	status := statusExpired
	switch roll := r.IntN(100); {
	case roll < shareCompleted:
		status = statusCompleted
	case roll < shareCompleted+shareUnderpaid:
		status = statusUnderpaid
	}
	if foreign {
		status = statusCompleted
	}
	var receivedMicros int64
	switch status {
	case statusCompleted:
		switch roll := r.IntN(100); {
		case roll < 25: // overpaid by up to 5 tokens
			receivedMicros = payableMicros + 1 + r.Int64N(5_000_000)
		case roll < 40 && tolerance.IsPositive(): // short, within tolerance
			receivedMicros = payableMicros - 1 - r.Int64N(tolerance.Shift(6).IntPart()-1)
		default:
			receivedMicros = payableMicros
		}
	case statusUnderpaid: // 10% to 90% of the payable amount
		receivedMicros = payableMicros * int64(10+r.IntN(81)) / 100
	}

	chainBase := start.Unix() - 2*3600 // the story happened in the last two hours
	t0 := chainBase + int64(index%3600)
	expiredAt := t0 + expiresIn
	receive := address(r, tok.chain)
	payer := address(r, tok.chain)
	walletID := uuidFrom(r)

	// One deposit, or two when the amount allows both to exceed dust.
	var deps []deposit
	if receivedMicros > 0 {
		parts := []int64{receivedMicros}
		if receivedMicros > 4*dustMicros && r.IntN(100) < 30 {
			first := receivedMicros * int64(20+r.IntN(61)) / 100
			parts = []int64{first, receivedMicros - first}
		}
		at := t0 + 30
		for _, m := range parts {
			at += int64(20 + r.IntN(60))
			deps = append(deps, deposit{txID: uuidFrom(r), hash: txHash(r, tok.chain), from: payer, micros: m, at: at,
				coboID: fmt.Sprintf("%d", 20000000000000+r.Int64N(1e13)), block: 20_000_000 + r.Int64N(1_000_000)})
		}
	}
	tFinal := expiredAt
	if status == statusCompleted {
		tFinal = deps[len(deps)-1].at + int64(1+r.IntN(5))
	}
	var late *deposit
	isLate := r.Float64() < cfg.LateRatio
	if foreign {
		isLate = index%2 == 0
	}
	if isLate {
		late = &deposit{txID: uuidFrom(r), hash: txHash(r, tok.chain), from: payer, micros: dustMicros + 10_000 + r.Int64N(50_000_000),
			at: tFinal + 60 + int64(r.IntN(1800)), coboID: fmt.Sprintf("%d", 20000000000000+r.Int64N(1e13)), block: 20_000_000 + r.Int64N(1_000_000)}
	}

	order := orderWire{
		DataType: "PaymentOrder", OrderID: orderID, MerchantID: merchant,
		MerchantOrderCode: fmt.Sprintf("MO-%d-%d", run, index+1), PSPOrderCode: fmt.Sprintf("PSP-%d-%d", run, index+1),
		PricingCurrency: "USD", PricingAmount: pricing.StringFixed(2), FeeAmount: fee.StringFixed(2),
		PayableCurrency: tok.id, ChainID: tok.chain, PayableAmount: payable.StringFixed(2), ExchangeRate: "1",
		AmountTolerance: tolerance.StringFixed(1), ReceiveAddress: receive, Status: statusPending,
		ReceivedTokenAmount: "0", ExpiredAt: expiredAt, CreatedTimestamp: t0, UpdatedTimestamp: t0,
		Transactions: []orderTx{}, TokenID: tok.id,
	}

	type event struct {
		id, typ string
		at      int64 // seconds
		data    any
	}
	var events []event
	add := func(typ string, at int64, data any) {
		events = append(events, event{id: uuidFrom(r), typ: typ, at: at, data: data})
	}
	add(cobo.EventOrderStatusUpdated, t0, order)

	txData := func(d deposit) txWire {
		return txWire{
			DataType: "PaymentTransaction", TransactionID: d.txID, CoboID: d.coboID, WalletID: walletID,
			Type: "Deposit", Status: "Completed", ChainID: tok.chain, TokenID: tok.id, AssetID: "USDT",
			Source:        txSource{SourceType: "DepositFromAddress", Addresses: []string{d.from}},
			Destination:   txDest{DestinationType: "DepositToAddress", WalletID: walletID, WalletType: "Custodial", Address: receive, Amount: micros(d.micros).String()},
			InitiatorType: "External", ConfirmedNum: 12, ConfirmingThreshold: 12, TransactionHash: d.hash,
			BlockInfo:        blockInfo{BlockNumber: d.block, BlockTimestamp: d.at*1000 - 3000, BlockHash: "0x" + hexFrom(r, 64)},
			CreatedTimestamp: d.at*1000 - 60_000, UpdatedTimestamp: d.at * 1000,
			AcquiringType: "Order", OrderID: orderID, PSPOrderCode: order.PSPOrderCode,
		}
	}
	var orderTxs []orderTx
	var updateTxs []updateTx
	for _, d := range deps {
		add(cobo.EventTransactionCompleted, d.at, txData(d))
		orderTxs = append(orderTxs, orderTx{TxID: d.txID, TxHash: d.hash, TokenID: tok.id, FromAddress: d.from, ToAddress: receive,
			Amount: micros(d.micros).String(), Status: "Completed", CreatedTimestamp: d.at*1000 - 60_000, UpdatedTimestamp: d.at * 1000})
		updateTxs = append(updateTxs, updateTx{TransactionID: d.txID, TxHash: d.hash, SourceAddress: d.from, Status: "Completed",
			Amount: tokenAmount{Amount: truncated2(micros(d.micros)), TokenID: tok.id, ChainID: tok.chain}})
	}

	final := order
	final.Status = status
	final.ReceivedTokenAmount = micros(receivedMicros).String()
	final.UpdatedTimestamp = tFinal
	final.Transactions = append([]orderTx{}, orderTxs...)
	if receivedMicros > 0 {
		settle := "Pending"
		final.SettlementStatus = &settle
	}
	add(cobo.EventOrderStatusUpdated, tFinal, final)

	amountOf := func(d decimal.Decimal) *tokenAmount {
		return &tokenAmount{Amount: truncated2(d), TokenID: tok.id, ChainID: tok.chain}
	}
	update := func(notice string, txs []updateTx, at int64) updateWire {
		u := updateWire{
			DataType: "PaymentOrderUpdate", OrderID: orderID, PSPOrderCode: order.PSPOrderCode, MerchantID: merchant,
			MerchantOrderCode: order.MerchantOrderCode, Status: status, NoticeType: &notice, ReceiveAddress: receive,
			ExpiredAt: expiredAt, RequestedAmount: amountOf(payable), CreditedAmount: amountOf(micros(receivedMicros)),
			Transactions: append([]updateTx{}, txs...), CreatedTimestamp: t0, UpdatedTimestamp: at,
		}
		if outstanding := payable.Sub(micros(receivedMicros)); status != statusCompleted && outstanding.IsPositive() {
			u.OutstandingAmount = amountOf(outstanding)
		}
		return u
	}
	add(cobo.EventOrderUpdated, tFinal, update("PaymentUpdated", updateTxs, tFinal))

	if late != nil {
		// A late deposit is credited to the developer account and does not
		// change the order, so the notice repeats the final amounts.
		add(cobo.EventTransactionLate, late.at, txData(*late))
		lateTx := updateTx{TransactionID: late.txID, TxHash: late.hash, SourceAddress: late.from, IsLate: true, Status: "Completed",
			Amount: tokenAmount{Amount: truncated2(micros(late.micros)), TokenID: tok.id, ChainID: tok.chain}}
		add(cobo.EventOrderUpdated, late.at, update(cobo.NoticeLatePaymentReceived, append(append([]updateTx{}, updateTxs...), lateTx), late.at))
	}

	var originals []delivery
	for _, e := range events {
		body, err := json.Marshal(envelope{EventID: e.id, URL: cfg.WebhookURL, CreatedTimestamp: e.at*1000 + int64(r.IntN(1000)), Type: e.typ, Data: e.data, Status: "Success"})
		if err != nil {
			return plannedOrder{}, fmt.Errorf("encode event %s of order %s: %w", e.typ, orderID, err)
		}
		originals = append(originals, delivery{eventID: e.id, eventType: e.typ, orderID: orderID, body: body})
	}
	if cfg.Shuffle {
		r.Shuffle(len(originals), func(i, j int) { originals[i], originals[j] = originals[j], originals[i] })
	}
	// Each resend goes somewhere after its original, as a redelivery would.
	resendsAfter := make([][]delivery, len(originals))
	for i, d := range originals {
		if r.Float64() < cfg.Duplicates {
			at := i + r.IntN(len(originals)-i)
			d.resend = true
			resendsAfter[at] = append(resendsAfter[at], d)
		}
	}
	var out []delivery
	for i, d := range originals {
		out = append(out, d)
		out = append(out, resendsAfter[i]...)
	}
	for i := range out {
		out[i].underscore = r.IntN(100) < underscoreShare
	}

	po := plannedOrder{orderID: orderID, foreign: foreign, status: status, final: final, events: len(events), late: late != nil, deliveries: out}
	if late != nil {
		po.lateTx = &orderTx{TxID: late.txID, TxHash: late.hash, TokenID: tok.id, FromAddress: late.from, ToAddress: receive,
			Amount: micros(late.micros).String(), Status: "Completed", CreatedTimestamp: late.at*1000 - 60_000, UpdatedTimestamp: late.at * 1000}
	}
	return po, nil
}

// apiOrder is the order as Cobo's order API answers it once its story is
// over: the final order, each deposit marked is_late false, and the late
// deposit, if any, listed too, marked is_late true, with the order's
// updated_timestamp at the late notice's (as payment.order.updated
// reports it).
func (o plannedOrder) apiOrder() (cobo.OrderData, error) {
	api := o.final
	no, yes := false, true
	api.Transactions = nil
	for _, tx := range o.final.Transactions {
		tx.IsLate = &no
		api.Transactions = append(api.Transactions, tx)
	}
	if o.lateTx != nil {
		tx := *o.lateTx
		tx.IsLate = &yes
		api.Transactions = append(api.Transactions, tx)
		api.UpdatedTimestamp = tx.UpdatedTimestamp / 1000
	}
	if api.Transactions == nil {
		api.Transactions = []orderTx{}
	}
	return api.orderData()
}

// orderData converts the wire order to the API's cobo.OrderData for the
// Sim, through JSON so that amounts are parsed exactly as a client would.
func (o orderWire) orderData() (cobo.OrderData, error) {
	var out cobo.OrderData
	b, err := json.Marshal(o)
	if err == nil {
		err = json.Unmarshal(b, &out)
	}
	if err != nil {
		return cobo.OrderData{}, fmt.Errorf("convert order %s: %w", o.OrderID, err)
	}
	return out, nil
}
