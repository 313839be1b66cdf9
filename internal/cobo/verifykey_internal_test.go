package cobo

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"

	"filippo.io/edwards25519"
	"github.com/stretchr/testify/require"
)

// Signature mutations of FuzzVerifyKeyMatchesStdlib: ops is read as pairs
// (op mod mutCount, arg).
const (
	mutNone      = iota
	mutFlipR     // flip bit arg of R
	mutFlipS     // flip bit arg of S
	mutAddL      // S += L: the same scalar, encoded non-canonically
	mutHighBits  // set some of the top three bits of sig[63]
	mutIdentityR // R = 0x01 then zeros, the identity's encoding
	mutZeroR     // R = zeros
	mutZeroS     // S = 0
	mutCount
)

// groupOrderL is L, the order of the prime-order subgroup, little endian.
var groupOrderL = decodeHex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")

// Point encodings crypto/ed25519 accepts as public keys although no
// honest key is one of them: small-order points, which verify forged
// signatures, and non-canonical encodings (y >= p), which the challenge
// hashes as given.
var (
	identityKey             = decodeHex("0100000000000000000000000000000000000000000000000000000000000000")
	identitySignBitKey      = decodeHex("0100000000000000000000000000000000000000000000000000000000000080")
	identityNonCanonicalKey = decodeHex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f") // y = p+1
	order2Key               = decodeHex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f") // y = -1
	order4Key               = decodeHex("0000000000000000000000000000000000000000000000000000000000000000") // y = 0
	order4NonCanonicalKey   = decodeHex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f") // y = p
	order8Key               = decodeHex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05")
	// y = 2 and y = p+2 have no x on the curve.
	notAPointKey             = decodeHex("0200000000000000000000000000000000000000000000000000000000000000")
	notAPointNonCanonicalKey = decodeHex("efffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
)

// forgedIdentitySig is R = identity, S = 0: [S]B = R + [k]A holds for any
// message when [k]A is the identity, as it always is for the identity key.
var forgedIdentitySig = append(bytes.Clone(identityKey), make([]byte, 32)...)

// verifyKeyCase is one input of FuzzVerifyKeyMatchesStdlib (see
// verifyKeyInput) and what crypto/ed25519.Verify answers for it.
type verifyKeyCase struct {
	name                        string
	keySeed, pub, msg, sig, ops []byte
	want                        bool
}

var verifyKeyCases = []verifyKeyCase{
	{name: "valid", keySeed: []byte("k1"), msg: []byte("message"), want: true},
	{name: "valid, empty message", keySeed: []byte("k2"), msg: []byte{}, want: true},
	{name: "valid, webhook digest", keySeed: []byte("k3"), msg: Digest([]byte(`{"event_id":"e1"}|1718587017026`)), want: true},
	{name: "R bit flipped", keySeed: []byte("k1"), msg: []byte("message"), ops: []byte{mutFlipR, 0}},
	{name: "R sign bit flipped", keySeed: []byte("k1"), msg: []byte("message"), ops: []byte{mutFlipR, 255}},
	{name: "S bit flipped", keySeed: []byte("k1"), msg: []byte("message"), ops: []byte{mutFlipS, 3}},
	{name: "S+L, non-canonical", keySeed: []byte("k1"), msg: []byte("message"), ops: []byte{mutAddL, 0}},
	{name: "sig[63] bit 5 set", keySeed: []byte("k1"), msg: []byte("message"), ops: []byte{mutHighBits, 0}},
	{name: "sig[63] top three bits set", keySeed: []byte("k1"), msg: []byte("message"), ops: []byte{mutHighBits, 6}},
	{name: "identity R", keySeed: []byte("k1"), msg: []byte("message"), ops: []byte{mutIdentityR, 0}},
	{name: "all-zero R", keySeed: []byte("k1"), msg: []byte("message"), ops: []byte{mutZeroR, 0}},
	{name: "zero S", keySeed: []byte("k1"), msg: []byte("message"), ops: []byte{mutZeroS, 0}},
	{name: "all-zero signature", keySeed: []byte("k1"), msg: []byte("message"), ops: []byte{mutZeroR, 0, mutZeroS, 0}},
	{name: "63-byte signature", keySeed: []byte("k1"), msg: []byte("message"), sig: make([]byte, 63)},
	{name: "wrong key", keySeed: []byte("k1"), pub: ed25519.NewKeyFromSeed(seed32([]byte("k2"))).Public().(ed25519.PublicKey), msg: []byte("message")},
	{name: "identity key, forged signature", pub: identityKey, msg: []byte("any"), sig: forgedIdentitySig, want: true},
	{name: "identity key with sign bit, forged signature", pub: identitySignBitKey, msg: []byte("any"), sig: forgedIdentitySig, want: true},
	{name: "non-canonical identity key, forged signature", pub: identityNonCanonicalKey, msg: []byte("any"), sig: forgedIdentitySig, want: true},
	{name: "identity key, non-canonical R", pub: identityKey, msg: []byte("any"), sig: append(bytes.Clone(identityNonCanonicalKey), make([]byte, 32)...)},
	{name: "identity key, S = L", pub: identityKey, msg: []byte("any"), sig: forgedIdentitySig, ops: []byte{mutAddL, 0}},
	{name: "order-2 key, forged signature", pub: order2Key, msg: []byte("any"), sig: forgedIdentitySig},
	{name: "order-4 key, forged signature", pub: order4Key, msg: []byte("any"), sig: forgedIdentitySig},
	{name: "non-canonical order-4 key, forged signature", pub: order4NonCanonicalKey, msg: []byte("any"), sig: forgedIdentitySig},
	{name: "order-8 key, forged signature", pub: order8Key, msg: []byte("any"), sig: forgedIdentitySig},
	// For these messages the key's order divides the challenge k, so [k]A
	// is the identity.
	{name: "order-8 key, forged signature, 8 | k", pub: order8Key, msg: []byte("msg 1"), sig: forgedIdentitySig, want: true},
	// The challenge hashes the key as encoded: with the canonical encoding
	// of the same point (order4Key) 4 does not divide k for this message.
	{name: "non-canonical order-4 key, forged signature, 4 | k", pub: order4NonCanonicalKey, msg: []byte("msg 12"), sig: forgedIdentitySig, want: true},
	{name: "order-4 key, forged signature, 4 does not divide k", pub: order4Key, msg: []byte("msg 12"), sig: forgedIdentitySig},
	{name: "not a point", keySeed: []byte("k1"), pub: notAPointKey, msg: []byte("message")},
	{name: "non-canonical, not a point", pub: notAPointNonCanonicalKey, msg: []byte("any"), sig: forgedIdentitySig},
}

// TestVerifyKeyInterestingCases pins what crypto/ed25519 answers for the
// seeds of FuzzVerifyKeyMatchesStdlib, so that they cover both answers.
func TestVerifyKeyInterestingCases(t *testing.T) {
	t.Parallel()
	for _, c := range verifyKeyCases {
		t.Run(c.name, func(t *testing.T) {
			pub, sig := verifyKeyInput(c.keySeed, c.pub, c.msg, c.sig, c.ops)
			require.Equal(t, c.want, requireVerifyKeyMatchesStdlib(t, pub, c.msg, sig))
		})
	}
}

// FuzzVerifyKeyMatchesStdlib: verifyKey answers exactly what
// crypto/ed25519.Verify answers, and refuses only keys under which
// crypto/ed25519 verifies nothing.
func FuzzVerifyKeyMatchesStdlib(f *testing.F) {
	for _, c := range verifyKeyCases {
		f.Add(c.keySeed, c.pub, c.msg, c.sig, c.ops)
	}
	f.Fuzz(func(t *testing.T, keySeed, pub, msg, sig, ops []byte) {
		pub2, sig2 := verifyKeyInput(keySeed, pub, msg, sig, ops)
		requireVerifyKeyMatchesStdlib(t, pub2, msg, sig2)
	})
}

// requireVerifyKeyMatchesStdlib checks verifyKey against crypto/ed25519
// and returns crypto/ed25519's answer.
func requireVerifyKeyMatchesStdlib(t *testing.T, pub ed25519.PublicKey, msg, sig []byte) bool {
	t.Helper()
	want := ed25519.Verify(pub, msg, sig)
	k, err := newVerifyKey(pub)
	if err != nil {
		require.False(t, want, "newVerifyKey refuses key %x, under which crypto/ed25519 verifies sig %x of msg %x", []byte(pub), sig, msg)
		return want
	}
	require.Equal(t, want, k.verify(msg, sig), "key %x, sig %x, msg %x", []byte(pub), sig, msg)
	return want
}

// verifyKeyInput makes the key and signature of a fuzz input: pub unless
// it is not 32 bytes, else the key of keySeed; sig unless it is empty,
// else keySeed's signature of msg; then ops applied to the signature.
func verifyKeyInput(keySeed, pub, msg, sig, ops []byte) (ed25519.PublicKey, []byte) {
	priv := ed25519.NewKeyFromSeed(seed32(keySeed))
	if len(pub) != ed25519.PublicKeySize {
		pub = priv.Public().(ed25519.PublicKey)
	}
	if len(sig) == 0 {
		sig = ed25519.Sign(priv, msg)
	} else {
		// The fuzzer's and the cases' bytes must not be modified.
		sig = bytes.Clone(sig)
	}
	mutateSignature(sig, ops)
	return pub, sig
}

// mutateSignature applies ops, pairs of (op, arg), to a 64-byte
// signature; it leaves other lengths alone.
func mutateSignature(sig, ops []byte) {
	if len(sig) != ed25519.SignatureSize {
		return
	}
	r, s := sig[:32], sig[32:]
	// A few ops are enough to combine any two mutations; more only slow
	// the fuzzer down.
	for i := 0; i+1 < len(ops) && i < 16; i += 2 {
		arg := ops[i+1]
		switch ops[i] % mutCount {
		case mutFlipR:
			r[arg/8] ^= 1 << (arg % 8)
		case mutFlipS:
			s[arg/8] ^= 1 << (arg % 8)
		case mutAddL:
			carry := 0
			for j := range s {
				sum := int(s[j]) + int(groupOrderL[j]) + carry
				s[j], carry = byte(sum), sum>>8
			}
		case mutHighBits:
			sig[63] |= (arg%7 + 1) << 5
		case mutIdentityR:
			copy(r, identityKey)
		case mutZeroR:
			clear(r)
		case mutZeroS:
			clear(s)
		}
	}
}

// seed32 stretches any fuzzed bytes to an Ed25519 seed.
func seed32(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func decodeHex(s string) []byte {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil {
		panic(err)
	}
	return b
}

// TestSignedRadix256Recombines: the digits of any scalar are in
// [-128, 128] and add up to it.
func TestSignedRadix256Recombines(t *testing.T) {
	t.Parallel()
	for i := range 2000 {
		wide := sha512.Sum512([]byte(fmt.Sprint("scalar ", i)))
		s, err := edwards25519.NewScalar().SetUniformBytes(wide[:])
		require.NoError(t, err)
		enc := s.Bytes()
		if i == 0 {
			// L-1, the largest scalar.
			enc = bytes.Clone(groupOrderL)
			enc[0]--
		}
		sum, pow := new(big.Int), big.NewInt(1)
		for j, d := range signedRadix256(enc) {
			require.True(t, d >= -128 && d <= 128, "digit %d of %x is %d", j, enc, d)
			sum.Add(sum, new(big.Int).Mul(big.NewInt(int64(d)), pow))
			pow.Lsh(pow, 8)
		}
		bigEndian := bytes.Clone(enc)
		slices.Reverse(bigEndian)
		require.Zero(t, sum.Cmp(new(big.Int).SetBytes(bigEndian)), "%x", enc)
	}
}

// TestVerifyKeyMatchesStdlibOnRandomKeys: many keys, each with a valid
// signature and a corrupted one, answered as crypto/ed25519 answers; and
// one key's table used by many goroutines at once (for -race: verify only
// reads it).
func TestVerifyKeyMatchesStdlibOnRandomKeys(t *testing.T) {
	t.Parallel()
	for i := range 60 {
		priv := ed25519.NewKeyFromSeed(seed32([]byte(fmt.Sprint("random key ", i))))
		msg := Digest([]byte(fmt.Sprint("message ", i)))
		sig := ed25519.Sign(priv, msg)
		pub := priv.Public().(ed25519.PublicKey)
		require.True(t, requireVerifyKeyMatchesStdlib(t, pub, msg, sig))
		bad := bytes.Clone(sig)
		bad[i%64] ^= 1 << (i % 8)
		requireVerifyKeyMatchesStdlib(t, pub, msg, bad)
	}

	priv := ed25519.NewKeyFromSeed(seed32([]byte("shared key")))
	k, err := newVerifyKey(priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 20 {
				msg := []byte(fmt.Sprint(g, "/", i))
				sig := ed25519.Sign(priv, msg)
				if !k.verify(msg, sig) {
					t.Errorf("goroutine %d: valid signature %d refused", g, i)
				}
				sig[40] ^= 4
				if k.verify(msg, sig) {
					t.Errorf("goroutine %d: corrupted signature %d accepted", g, i)
				}
			}
		})
	}
	wg.Wait()
}

// TestCombTableEntries: every entry of the base point's table and of a
// key's table is its multiple, computed the usual way.
func TestCombTableEntries(t *testing.T) {
	t.Parallel()
	priv := ed25519.NewKeyFromSeed(seed32([]byte("table key")))
	a, err := new(edwards25519.Point).SetBytes(priv.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	for name, c := range map[string]struct {
		table *combTable
		point *edwards25519.Point
	}{
		"base point": {basePointTable(), edwards25519.NewGeneratorPoint()},
		"key":        {newCombTable(a), a},
	} {
		for i := range c.table {
			for j := range c.table[i] {
				// (j+1)·256^i, little endian, reduced mod L: both points
				// have order L.
				var b [64]byte
				b[i] = byte(j + 1)
				s, err := edwards25519.NewScalar().SetUniformBytes(b[:])
				require.NoError(t, err)
				want := new(edwards25519.Point).ScalarMult(s, c.point)
				require.Equal(t, 1, want.Equal(&c.table[i][j]), "%s table [%d][%d]", name, i, j)
			}
		}
	}
}
