package cobo_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
)

// fixedKey is a deterministic key so that the vector below is stable.
func fixedKey(seedByte byte) (ed25519.PrivateKey, string) {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = seedByte
	}
	priv := ed25519.NewKeyFromSeed(seed)
	return priv, hex.EncodeToString(priv.Public().(ed25519.PublicKey))
}

func TestDigestIsDoubleSHA256(t *testing.T) {
	t.Parallel()
	first := sha256.Sum256([]byte("abc"))
	want := sha256.Sum256(first[:])
	require.Equal(t, want[:], cobo.Digest([]byte("abc")))
	// Known value of SHA256(SHA256("abc")).
	require.Equal(t, "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358", hex.EncodeToString(cobo.Digest([]byte("abc"))))
}

func TestVerify(t *testing.T) {
	t.Parallel()
	priv, pub := fixedKey(7)
	_, otherPub := fixedKey(9)
	body := []byte(`{"event_id":"e1","type":"payment.order.status.updated","data":{}}`)
	ts := "1718587017026"
	sig := cobo.SignWebhook(priv, body, ts)

	// The signature is Ed25519 over SHA256(SHA256(body|ts)), checked here
	// independently of SignWebhook.
	msg := append(append(append([]byte{}, body...), '|'), ts...)
	require.True(t, ed25519.Verify(priv.Public().(ed25519.PublicKey), cobo.Digest(msg), mustHex(t, sig)))

	v, err := cobo.NewVerifier(pub)
	require.NoError(t, err)
	require.NoError(t, v.Verify(body, ts, sig))

	tests := []struct {
		name      string
		body      []byte
		ts, sig   string
		wantErr   error
		wantInMsg string
	}{
		{"tampered body", append([]byte(" "), body...), ts, sig, cobo.ErrInvalidSignature, "no trusted key"},
		{"tampered timestamp", body, "1718587017027", sig, cobo.ErrInvalidSignature, "no trusted key"},
		{"signature not hex", body, ts, "zz" + sig[2:], cobo.ErrInvalidSignature, "not hex"},
		{"signature too short", body, ts, sig[:64], cobo.ErrInvalidSignature, "64 characters, want 128 hex"},
		{"missing signature", body, ts, "", cobo.ErrMissingSignature, "Biz-Resp-Signature"},
		{"missing timestamp", body, "", sig, cobo.ErrMissingSignature, "Biz-Timestamp"},
		{"flipped bit", body, ts, flipLastHex(sig), cobo.ErrInvalidSignature, "no trusted key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := v.Verify(tt.body, tt.ts, tt.sig)
			require.ErrorIs(t, err, tt.wantErr)
			require.Contains(t, err.Error(), tt.wantInMsg)
		})
	}

	t.Run("wrong key", func(t *testing.T) {
		other, err := cobo.NewVerifier(otherPub)
		require.NoError(t, err)
		require.ErrorIs(t, other.Verify(body, ts, sig), cobo.ErrInvalidSignature)
	})
	t.Run("key rotation: any trusted key verifies", func(t *testing.T) {
		newPriv, newPub := fixedKey(11)
		rot, err := cobo.NewVerifier(cobo.ParseKeyList(" " + pub + " , " + newPub + ",")...)
		require.NoError(t, err)
		require.NoError(t, rot.Verify(body, ts, sig))
		require.NoError(t, rot.Verify(body, ts, cobo.SignWebhook(newPriv, body, ts)))
		// After the old key is retired, its signatures fail.
		retired, err := cobo.NewVerifier(newPub)
		require.NoError(t, err)
		require.ErrorIs(t, retired.Verify(body, ts, sig), cobo.ErrInvalidSignature)
	})
	t.Run("uppercase hex signature", func(t *testing.T) {
		require.NoError(t, v.Verify(body, ts, strings.ToUpper(sig)))
	})
}

func TestNewVerifierRejectsBadKeys(t *testing.T) {
	t.Parallel()
	_, err := cobo.NewVerifier()
	require.Error(t, err)
	_, err = cobo.NewVerifier("nothex")
	require.ErrorContains(t, err, "key 0 is not hex")
	_, err = cobo.NewVerifier(cobo.DevWebhookKey, "abcd")
	require.ErrorContains(t, err, "key 1 has 2 bytes")
	// 32 bytes, but y = 2 has no x on the curve: crypto/ed25519 would
	// reject every signature under it.
	_, err = cobo.NewVerifier(cobo.DevWebhookKey, "02"+strings.Repeat("00", 31))
	require.ErrorContains(t, err, "webhook key 1: not an Ed25519 public key")
	_, err = cobo.NewVerifier(cobo.DevWebhookKey, cobo.ProdWebhookKey)
	require.NoError(t, err)
}

func FuzzVerify(f *testing.F) {
	priv, pub := fixedKey(7)
	v, err := cobo.NewVerifier(pub)
	require.NoError(f, err)
	body := []byte(`{"event_id":"e1","type":"t","data":{}}`)
	f.Add(body, "1718587017026", cobo.SignWebhook(priv, body, "1718587017026"))
	f.Add([]byte{}, "", "")
	f.Add([]byte("x"), "1", strings.Repeat("0", 128))
	f.Add([]byte("{}"), "1|2", "zz")
	f.Fuzz(func(t *testing.T, body []byte, ts, sig string) {
		err := v.Verify(body, ts, sig)
		if err == nil {
			// Only a real signature by the trusted key may pass.
			require.True(t, ed25519.Verify(priv.Public().(ed25519.PublicKey), cobo.Digest(cobo.WebhookMessage(body, ts)), mustHex(t, sig)))
			return
		}
		require.True(t, isSigErr(err), "unexpected error class: %v", err)
	})
}

func isSigErr(err error) bool {
	return errorsIs(err, cobo.ErrMissingSignature) || errorsIs(err, cobo.ErrInvalidSignature)
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}

func flipLastHex(s string) string {
	last := s[len(s)-1]
	repl := byte('0')
	if last == '0' {
		repl = '1'
	}
	return s[:len(s)-1] + string(repl)
}
