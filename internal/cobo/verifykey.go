package cobo

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"fmt"
	"sync"

	"filippo.io/edwards25519"
)

// verifyKey is a trusted Ed25519 public key decoded once, with a table of
// multiples of it. crypto/ed25519 decompresses the key (a square root in
// the field) on every Verify and computes [k]A by repeated doubling; the
// workers and ingest verify every event, so a verifyKey keeps what only
// depends on the key: its multiples (see combTable), which replace the
// doublings with a few additions.
type verifyKey struct {
	// encoded is the key exactly as configured: the challenge hashes these
	// bytes, not a re-encoding, so that a non-canonical encoding verifies
	// as crypto/ed25519 verifies it.
	encoded [ed25519.PublicKeySize]byte
	// minusA holds the multiples of -A, the decoded point negated, as the
	// verification equation uses it.
	minusA *combTable
}

// newVerifyKey decodes a 32-byte Ed25519 public key. It accepts exactly
// the encodings crypto/ed25519 accepts (non-canonical ones and small-order
// points included) and returns an error for anything else.
func newVerifyKey(raw []byte) (verifyKey, error) {
	var a edwards25519.Point
	if _, err := a.SetBytes(raw); err != nil {
		return verifyKey{}, fmt.Errorf("not an Ed25519 public key: %w", err)
	}
	var k verifyKey
	copy(k.encoded[:], raw)
	k.minusA = newCombTable(new(edwards25519.Point).Negate(&a))
	return k, nil
}

// verify reports whether sig is a valid Ed25519 signature of message under
// k. It answers exactly what crypto/ed25519.Verify answers for the same
// key, message and signature: pure Ed25519 (RFC 8032 section 5.1.7) with
// Go's checks, a canonical S and the cofactorless equation [S]B = R + [k]A
// compared on R's encoding. Only how [S]B + [k](-A) is computed differs,
// and the point it gives, hence its encoding, is the same.
func (k *verifyKey) verify(message, sig []byte) bool {
	if len(sig) != ed25519.SignatureSize {
		return false
	}
	// The top three bits of S are zero in every canonical S. The canonical
	// check below would refuse them too; crypto/ed25519 refuses them first,
	// before hashing, and so does this.
	if sig[63]&224 != 0 {
		return false
	}

	h := sha512.New()
	h.Write(sig[:32])
	h.Write(k.encoded[:])
	h.Write(message)
	var hram [sha512.Size]byte
	kScalar, err := edwards25519.NewScalar().SetUniformBytes(h.Sum(hram[:0]))
	if err != nil {
		// SetUniformBytes fails only on an input that is not 64 bytes.
		panic("cobo: internal error: SHA-512 digest is not 64 bytes")
	}

	// A non-canonical S (S >= L) would make signatures malleable; RFC 8032
	// and crypto/ed25519 reject it.
	s, err := edwards25519.NewScalar().SetCanonicalBytes(sig[32:])
	if err != nil {
		return false
	}

	// [S]B = R + [k]A  <=>  [S]B + [k](-A) = R
	r := edwards25519.NewIdentityPoint()
	basePointTable().addMultiple(r, s)
	k.minusA.addMultiple(r, kScalar)
	// The inputs are public, so the comparison need not be constant time
	// (crypto/ed25519 uses bytes.Equal too). Comparing encodings rejects a
	// non-canonical R, as crypto/ed25519 does.
	return bytes.Equal(sig[:32], r.Bytes())
}

// combTable holds the multiples j·256^i·P of a point P for i < 32 and
// 1 <= j <= 128 (640 KiB): [s]P for a scalar s written in signed radix
// 256, s = Σ d_i·256^i with -128 <= d_i <= 128, is then the sum of at
// most 32 of them, without a doubling (crypto/ed25519 doubles about 253
// times per verification). It runs in variable time, as verification
// may: every input is public.
type combTable [32][128]edwards25519.Point

// newCombTable computes p's table: 4,096 additions (about 1.5 ms), once
// per key.
func newCombTable(p *edwards25519.Point) *combTable {
	t := new(combTable)
	var base edwards25519.Point
	base.Set(p)
	for i := range t {
		t[i][0].Set(&base)
		for j := 1; j < len(t[i]); j++ {
			t[i][j].Add(&t[i][j-1], &base)
		}
		// 256·base = 128·base + 128·base.
		base.Add(&t[i][127], &t[i][127])
	}
	return t
}

// addMultiple adds [s]P to acc, P being the table's point.
func (t *combTable) addMultiple(acc *edwards25519.Point, s *edwards25519.Scalar) {
	for i, d := range signedRadix256(s.Bytes()) {
		switch {
		case d > 0:
			acc.Add(acc, &t[i][d-1])
		case d < 0:
			acc.Subtract(acc, &t[i][-d-1])
		}
	}
}

// signedRadix256 writes a reduced scalar (little endian, below 2^253, as
// every Scalar's encoding is: below L) as 32 digits d_i in [-128, 128]
// with s = Σ d_i·256^i: its bytes, each of 128 or more borrowing 256 from
// itself and carrying one into the next. The last digit takes the final
// carry and stays far below 128: the top byte of s is at most 0x1f.
func signedRadix256(s []byte) [32]int16 {
	var d [32]int16
	for i, b := range s[:32] {
		d[i] = int16(b)
	}
	for i := range 31 {
		carry := (d[i] + 128) >> 8
		d[i] -= carry << 8
		d[i+1] += carry
	}
	return d
}

// basePointTable is the table of Ed25519's base point B, built on first
// use.
var basePointTable = sync.OnceValue(func() *combTable {
	return newCombTable(edwards25519.NewGeneratorPoint())
})
