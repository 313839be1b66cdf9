package e2e_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/events"
	"github.com/paystream/paystream/internal/ingest"
	"github.com/paystream/paystream/internal/natsembed"
	"github.com/paystream/paystream/internal/replay"
	"github.com/paystream/paystream/internal/sandbox/bitgosim"
	"github.com/paystream/paystream/internal/sandbox/cobosim"
	"github.com/paystream/paystream/internal/sandbox/payer"
	"github.com/paystream/paystream/internal/testutil"
)

// TestEmbeddedNATSRequiresCredentials: the embedded server admits only the
// users of deploy/nats/accounts.conf, with the passwords ingest wrote at
// its first start and keeps across restarts.
func TestEmbeddedNATSRequiresCredentials(t *testing.T) {
	dir := t.TempDir()
	signer := testutil.NewSigner(t)
	s := startIngest(t, signer, ingest.Config{DataDir: dir})
	url := s.NATSURL()

	_, err := nats.Connect(url)
	require.ErrorIs(t, err, nats.ErrAuthorization, "a client without credentials is refused")
	_, err = nats.Connect(url, nats.UserInfo(natsembed.UserWorker, "not-the-password"))
	require.ErrorIs(t, err, nats.ErrAuthorization, "a wrong password is refused")
	_, err = nats.Connect(url, nats.UserInfo(natsembed.UserSys, ""))
	require.ErrorIs(t, err, nats.ErrAuthorization)

	passwords := map[string]string{}
	for _, u := range natsembed.FileUsers {
		path := natsembed.PasswordFile(dir, u)
		st, err := os.Stat(path)
		require.NoError(t, err, u)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "%s is readable by its owner only", path)
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		passwords[u] = strings.TrimSpace(string(b))
		require.GreaterOrEqual(t, len(passwords[u]), 32)
	}
	st, err := os.Stat(natsembed.CredentialsDir(dir))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())

	// The worker's own password works, with the worker's permissions: it
	// may not publish webhook events (the server refuses the publish).
	nc, err := nats.Connect(url, nats.UserInfo(natsembed.UserWorker, passwords[natsembed.UserWorker]), nats.CustomInboxPrefix("_INBOX_worker"),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	require.NoError(t, err)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err = js.Publish(ctx, events.Subject(cobo.EventOrderStatusUpdated, "O-x"), []byte(`{}`))
	cancel()
	require.Error(t, err, "the worker user may not store events")
	nc.Close()

	// A restart keeps the passwords: workers need not be reconfigured.
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, s.Shutdown(ctx))
	s2 := startIngest(t, signer, ingest.Config{DataDir: dir})
	for _, u := range natsembed.FileUsers {
		require.Equal(t, passwords[u], s2.Credentials()[u], u)
	}
	nc, err = nats.Connect(s2.NATSURL(), s2.Credentials().Login(natsembed.UserOperator)...)
	require.NoError(t, err)
	nc.Close()
}

// TestEmbeddedNATSListensBeyondLoopbackOnlyWithTLS: a -nats-listen that is
// not loopback is refused without TLS; with TLS, plain clients are refused
// and TLS clients log in.
func TestEmbeddedNATSListensBeyondLoopbackOnlyWithTLS(t *testing.T) {
	signer := testutil.NewSigner(t)
	cfg := ingest.Config{Listen: "127.0.0.1:0", AdminListen: "127.0.0.1:0", NATSListen: "0.0.0.0:0", DataDir: t.TempDir(), CoboPubKeys: []string{signer.PubHex}}
	_, err := ingest.Start(context.Background(), cfg)
	require.ErrorContains(t, err, "NATSListenTLSCert")
	cfg.NATSListen = ":4222"
	_, err = ingest.Start(context.Background(), cfg)
	require.ErrorContains(t, err, "not loopback")

	certFile, keyFile := selfSignedCert(t)
	s := startIngest(t, signer, ingest.Config{NATSListenTLSCert: certFile, NATSListenTLSKey: keyFile})
	login := s.Credentials().Login(natsembed.UserWorker)
	_, err = nats.Connect(s.NATSURL(), login...)
	require.Error(t, err, "a client without TLS is refused")
	nc, err := nats.Connect(s.NATSURL(), append(login, nats.RootCAs(certFile))...)
	require.NoError(t, err)
	require.True(t, nc.TLSRequired())
	nc.Close()
}

// selfSignedCert writes a certificate for 127.0.0.1 and its key.
func selfSignedCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "paystream test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	return certFile, keyFile
}

// deadLetters lists the dead letters as the operator does.
func deadLetters(t *testing.T, s *ingest.Service) []replay.DeadLetterLine {
	t.Helper()
	nc, err := nats.Connect(s.NATSURL(), s.Credentials().Login(natsembed.UserOperator)...)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = replay.ListDeadLetters(ctx, replay.DLQConfig{JetStream: js, Out: &out})
	require.NoError(t, err)
	var lines []replay.DeadLetterLine
	for _, l := range bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		var dl replay.DeadLetterLine
		require.NoError(t, json.Unmarshal(l, &dl))
		lines = append(lines, dl)
	}
	return lines
}

// waitForDeadLetters waits until n dead letters exist and returns them.
func waitForDeadLetters(t *testing.T, s *ingest.Service, n int) []replay.DeadLetterLine {
	t.Helper()
	var got []replay.DeadLetterLine
	testutil.WaitFor(t, 30*time.Second, "dead letters", func() bool {
		got = deadLetters(t, s)
		return len(got) >= n
	})
	return got
}

// TestForgedEventsAreDeadLetteredUntrusted publishes, with the operator's
// credentials (which may publish events, for redrive), a Completed event
// for an order Cobo knows, once signed by a key nobody trusts and once
// unsigned. Neither changes anything; both are dead-lettered untrusted.
func TestForgedEventsAreDeadLetteredUntrusted(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	s.registerOrders("O-forged")
	w := s.startWorker(t, nil)

	nc, err := nats.Connect(s.ing.NATSURL(), s.ing.Credentials().Login(natsembed.UserOperator)...)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stranger := testutil.NewSigner(t)
	for i, signed := range []bool{true, false} {
		body := testutil.OrderEvent("forged-"+string(rune('a'+i)), "O-forged", "M1001", "Completed", 200, "102.000001")
		env, err := cobo.ParseEnvelope(body)
		require.NoError(t, err)
		d := cobo.Delivery{Envelope: env, Body: body, ReceivedAt: time.Now()}
		if signed {
			d.Timestamp, d.Signature = stranger.Sign(body)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = js.PublishMsg(ctx, events.NewMsg(d))
		cancel()
		require.NoError(t, err)
	}

	dls := waitForDeadLetters(t, s.ing, 2)
	require.Len(t, dls, 2)
	for _, dl := range dls {
		require.True(t, strings.HasPrefix(dl.Reason, "untrusted: "), dl.Reason)
		require.Equal(t, "O-forged", dl.OrderID)
	}
	_, stored := getOrder(t, s.ing, "O-forged")
	require.False(t, stored, "a forged event changes nothing")
	require.Empty(t, s.sim.Items(), "and allocates nothing")
	code, metrics := getJSON(t, "http://"+w.W.MetricsAddr()+"/metrics", nil)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(metrics), `paystream_worker_dead_letters_total{reason="untrusted"} 2`)
}

// TestOrderCoboDoesNotKnowAllocatesNothing sends a validly signed history
// of an order Cobo's order API does not know, as another Cobo customer's
// would be: the Completed events are dead-lettered unknown_order and
// nothing is allocated.
func TestOrderCoboDoesNotKnowAllocatesNothing(t *testing.T) {
	s := startAllocStack(t, cobosim.Config{})
	w := s.startWorker(t, nil)
	for _, ev := range orderEvents("O-theirs") {
		postUntilStored(t, s.signer, s.ing, ev)
	}
	// Completed, the Completed notice with the late one, and the late payment.
	dls := waitForDeadLetters(t, s.ing, 3)
	for _, dl := range dls {
		require.True(t, strings.HasPrefix(dl.Reason, "unknown_order: "), dl.Reason)
	}
	v, _ := getOrder(t, s.ing, "O-theirs")
	require.NotEqual(t, "Completed", string(v.Status))
	require.Empty(t, v.Allocations)
	require.Empty(t, s.sim.Items())
	code, metrics := getJSON(t, "http://"+w.W.MetricsAddr()+"/metrics", nil)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(metrics), `paystream_worker_dead_letters_total{reason="unknown_order"}`)
}

// TestForeignCoboCustomerAllocatesNothing plays, through the sandbox, our
// orders and those of another Cobo customer who registered our webhook URL:
// the same webhook key, the same merchant ids, Completed orders and late
// payments, but orders Cobo's API does not know for our API key. Ours are
// allocated; theirs are dead-lettered unknown_order and allocate nothing at
// Cobo or BitGo.
func TestForeignCoboCustomerAllocatesNothing(t *testing.T) {
	s := startBitGoStack(t, bitgosim.Config{})
	s.startWorker(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := payer.Run(ctx, payer.Config{
		WebhookURL: "http://" + s.ing.PublicAddr() + ingest.WebhookPath, WebhookKey: s.signer.Key,
		Orders: 6, ForeignOrders: 6, Seed: 7, LateRatio: 0.5, Duplicates: 0.2, Shuffle: true, Sim: s.sim, Logger: zerolog.Nop(),
	})
	require.NoError(t, err)
	require.Zero(t, st.Failed)
	require.Positive(t, st.ByStatus["Completed"], "some of our orders complete, so the rules have work")
	foreign := s.sim.ForeignOrderIDs()
	require.Len(t, foreign, 6)

	testutil.WaitFor(t, time.Minute, "every foreign order dead-lettered unknown_order", func() bool {
		dead := map[string]bool{}
		for _, dl := range deadLetters(t, s.ing) {
			require.True(t, strings.HasPrefix(dl.Reason, "unknown_order: "), "only foreign orders are refused: %s", dl.Reason)
			dead[dl.OrderID] = true
		}
		for _, id := range foreign {
			if !dead[id] {
				return false
			}
		}
		return true
	})
	testutil.WaitFor(t, time.Minute, "our orders allocated", func() bool {
		return len(s.sim.Items()) > 0 && len(s.bitgo.sim.Allocations()) > 0
	})
	require.Empty(t, s.sim.ForeignOrderItems(), "no Cobo allocation names a foreign order")
	require.Empty(t, s.bitgo.sim.AllocationsNaming(foreign...), "no BitGo allocation names a foreign order")
	for _, id := range foreign {
		if v, ok := getOrder(t, s.ing, id); ok {
			require.Empty(t, v.Allocations, id)
			require.NotEqual(t, "Completed", string(v.Status), id)
		}
	}
}
