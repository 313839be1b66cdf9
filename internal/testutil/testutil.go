// Package testutil starts real JetStream servers inside the test process and
// builds signed Cobo webhooks for tests.
package testutil

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/natsembed"
)

// StartJetStream starts an embedded JetStream server reachable only
// in-process, stores in a temp dir, and stops it when the test ends.
func StartJetStream(t testing.TB) *server.Server {
	t.Helper()
	return StartJetStreamAt(t, t.TempDir(), "")
}

// StartJetStreamAt starts a JetStream server storing in dir, listening on
// listen ("" for in-process only). It is shut down when the test ends.
//
// It syncs to disk lazily, not before every acknowledgement as paystream's
// embedded server does: no test here survives a power loss, and an fsync
// per write would make the suite wait on the disk. Tests of durability
// start natsembed (or ingest) with its defaults instead.
func StartJetStreamAt(t testing.TB, dir, listen string) *server.Server {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Config{Listen: listen, StoreDir: dir, ServerName: "test", SyncInterval: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	return srv
}

// Connect opens an in-process connection to srv, closed when the test ends.
func Connect(t testing.TB, srv *server.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	return nc, js
}

// FreePort returns a loopback host:port that was free a moment ago.
func FreePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// Signer signs webhooks the way Cobo does, with a key generated per test.
type Signer struct {
	Key    ed25519.PrivateKey
	PubHex string
}

// NewSigner generates a fresh webhook signing key.
func NewSigner(t testing.TB) *Signer {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return &Signer{Key: priv, PubHex: hex.EncodeToString(pub)}
}

// Verifier returns a verifier trusting only this signer's key, as ingest
// and the workers of a test are configured.
func (s *Signer) Verifier(t testing.TB) *cobo.Verifier {
	t.Helper()
	v, err := cobo.NewVerifier(s.PubHex)
	require.NoError(t, err)
	return v
}

// Sign returns the Biz-Timestamp and Biz-Resp-Signature for body.
func (s *Signer) Sign(body []byte) (ts, sig string) {
	ts = strconv.FormatInt(time.Now().UnixMilli(), 10)
	return ts, cobo.SignWebhook(s.Key, body, ts)
}

// Request builds a signed POST of body to url.
func (s *Signer) Request(t testing.TB, url string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	require.NoError(t, err)
	ts, sig := s.Sign(body)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(cobo.HeaderTimestamp, ts)
	req.Header.Set(cobo.HeaderSignature, sig)
	return req
}

// OrderEvent is a payment.order.status.updated webhook body. Amounts are
// decimal strings; updated is the order's updated_timestamp in seconds.
func OrderEvent(eventID, orderID, merchant, status string, updated int64, received string) []byte {
	return fmt.Appendf(nil, `{"event_id":%q,"url":"https://psp.example/webhooks/cobo","created_timestamp":%d,"type":"payment.order.status.updated","data":{"data_type":"PaymentOrder","order_id":%q,"merchant_id":%q,"psp_order_code":"P-%s","pricing_currency":"USD","pricing_amount":"100.00","fee_amount":"2.00","payable_currency":"ETH_USDT","chain_id":"ETH","payable_amount":"102.00","exchange_rate":"1","receive_address":"0xabc","status":%q,"received_token_amount":%q,"created_timestamp":1700000000,"updated_timestamp":%d,"transactions":[]},"status":"Success"}`,
		eventID, updated*1000, orderID, merchant, orderID, status, received, updated)
}

// OrderUpdatedEvent is a payment.order.updated (standard) webhook body; a
// non-empty lateTx adds a late transaction and the LatePaymentReceived notice.
func OrderUpdatedEvent(eventID, orderID, merchant, status string, updated int64, credited, lateTx, lateAmount string) []byte {
	notice, txs := "PaymentUpdated", "[]"
	if lateTx != "" {
		notice = cobo.NoticeLatePaymentReceived
		txs = fmt.Sprintf(`[{"transaction_id":%q,"tx_hash":"0xfeed","amount":{"amount":%q,"token_id":"ETH_USDT","chain_id":"ETH"},"source_address":"0xpayer","is_late":true,"status":"Completed"}]`, lateTx, lateAmount)
	}
	return fmt.Appendf(nil, `{"event_id":%q,"created_timestamp":%d,"type":"payment.order.updated","data":{"data_type":"PaymentOrderUpdate","order_id":%q,"psp_order_code":"P-%s","merchant_id":%q,"status":%q,"notice_type":%q,"requested_amount":{"amount":"102","token_id":"ETH_USDT","chain_id":"ETH"},"credited_amount":{"amount":%q,"token_id":"ETH_USDT","chain_id":"ETH"},"outstanding_amount":null,"transactions":%s,"created_timestamp":1700000000,"updated_timestamp":%d}}`,
		eventID, updated*1000, orderID, orderID, merchant, status, notice, credited, txs, updated)
}

// TransactionEvent is a payment.transaction.<kind> webhook body (kind is
// "late" or "completed") crediting amount of ETH_USDT to orderID.
func TransactionEvent(eventID, kind, orderID, txID, amount string) []byte {
	return fmt.Appendf(nil, `{"event_id":%q,"created_timestamp":1700000500000,"type":"payment.transaction.%s","data":{"data_type":"PaymentTransaction","transaction_id":%q,"wallet_id":"w1","status":"Completed","chain_id":"ETH","token_id":"ETH_USDT","source":{"source_type":"DepositFromAddress","addresses":["0xpayer"]},"destination":{"destination_type":"DepositToAddress","address":"0xabc","amount":%q},"initiator_type":"External","acquiring_type":"Order","order_id":%q,"created_timestamp":1700000500000,"updated_timestamp":1700000500000}}`,
		eventID, kind, txID, amount, orderID)
}

// TransactionEventWithHash is TransactionEvent with the deposit's on-chain
// hash as transaction_hash.
func TransactionEventWithHash(eventID, kind, orderID, txID, hash, amount string) []byte {
	return fmt.Appendf(nil, `{"event_id":%q,"created_timestamp":1700000500000,"type":"payment.transaction.%s","data":{"data_type":"PaymentTransaction","transaction_id":%q,"transaction_hash":%q,"wallet_id":"w1","status":"Completed","chain_id":"ETH","token_id":"ETH_USDT","source":{"source_type":"DepositFromAddress","addresses":["0xpayer"]},"destination":{"destination_type":"DepositToAddress","address":"0xabc","amount":%q},"initiator_type":"External","acquiring_type":"Order","order_id":%q,"created_timestamp":1700000500000,"updated_timestamp":1700000500000}}`,
		eventID, kind, txID, hash, amount, orderID)
}

// LateNoticeEvent is a payment.order.updated LatePaymentReceived notice
// listing one late transaction with its hash (OrderUpdatedEvent's is
// always 0xfeed).
func LateNoticeEvent(eventID, orderID, merchant, status string, updated int64, credited, lateTx, lateHash, lateAmount string) []byte {
	txs := fmt.Sprintf(`[{"transaction_id":%q,"tx_hash":%q,"amount":{"amount":%q,"token_id":"ETH_USDT","chain_id":"ETH"},"source_address":"0xpayer","is_late":true,"status":"Completed"}]`, lateTx, lateHash, lateAmount)
	return fmt.Appendf(nil, `{"event_id":%q,"created_timestamp":%d,"type":"payment.order.updated","data":{"data_type":"PaymentOrderUpdate","order_id":%q,"psp_order_code":"P-%s","merchant_id":%q,"status":%q,"notice_type":%q,"requested_amount":{"amount":"102","token_id":"ETH_USDT","chain_id":"ETH"},"credited_amount":{"amount":%q,"token_id":"ETH_USDT","chain_id":"ETH"},"outstanding_amount":null,"transactions":%s,"created_timestamp":1700000000,"updated_timestamp":%d}}`,
		eventID, updated*1000, orderID, orderID, merchant, status, cobo.NoticeLatePaymentReceived, credited, txs, updated)
}

// CoboOrder is Cobo's order API answer (GET /payments/orders/{id}, or an
// item of GET /payments/orders) for the order OrderEvent describes with
// the same arguments, listing txs.
func CoboOrder(orderID, merchant, status string, updated int64, received string, txs ...cobo.OrderTransaction) cobo.OrderData {
	env, err := cobo.ParseEnvelope(OrderEvent("api", orderID, merchant, status, updated, received))
	if err != nil {
		panic(err)
	}
	var o cobo.OrderData
	if err := json.Unmarshal(env.Data, &o); err != nil {
		panic(err)
	}
	o.DataType = ""
	o.Transactions = txs
	return o
}

// CoboTx is an item of a Cobo order's transactions, Completed, with
// is_late as given (nil: not said).
func CoboTx(txID, hash, amount string, isLate *bool) cobo.OrderTransaction {
	var a cobo.Amount
	if err := a.UnmarshalJSON([]byte(strconv.Quote(amount))); err != nil {
		panic(err)
	}
	return cobo.OrderTransaction{TxID: txID, TxHash: hash, TokenID: "ETH_USDT", Amount: a, Status: cobo.TxStatusCompleted,
		CreatedTimestamp: 1700000400000, UpdatedTimestamp: 1700000400000, IsLate: isLate}
}

// WorkerConsumerInfo reads the workers' durable consumer on the event
// stream: what it has delivered, acked and still holds.
func WorkerConsumerInfo(t testing.TB, js jetstream.JetStream) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := js.Consumer(context.Background(), events.StreamName, events.ConsumerName)
	require.NoError(t, err)
	info, err := c.Info(context.Background())
	require.NoError(t, err)
	return info
}
