package cobo_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/loadgen"
)

// BenchmarkVerify measures webhook signature verifications per second on
// this machine, on every core, with loadgen's payloads: the ceiling the
// ingest path sits under.
func BenchmarkVerify(b *testing.B) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(b, err)
	v, err := cobo.NewVerifier(hex.EncodeToString(pub))
	require.NoError(b, err)
	const n = 1024
	bodies, sigs := make([][]byte, n), make([]string, n)
	ts := strconv.FormatInt(1700000000000, 10)
	for i := range n {
		bodies[i] = loadgen.Body("bench", i)
		sigs[i] = cobo.SignWebhook(key, bodies[i], ts)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if err := v.Verify(bodies[i%n], ts, sigs[i%n]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
}

// BenchmarkParseEnvelope measures the envelope parse ingest does on every
// verified webhook.
func BenchmarkParseEnvelope(b *testing.B) {
	body := loadgen.Body("bench", 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cobo.ParseEnvelope(body); err != nil {
			b.Fatal(err)
		}
	}
}
