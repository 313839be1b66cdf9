package cobo

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"fmt"

	"filippo.io/edwards25519"
)

// verifyKey is a trusted Ed25519 public key decoded once. crypto/ed25519
// decompresses the key (a square root in the field) on every Verify; the
// workers verify every event they apply, so the Verifier keeps the
// decoded point instead.
type verifyKey struct {
	// encoded is the key exactly as configured: the challenge hashes these
	// bytes, not a re-encoding, so that a non-canonical encoding verifies
	// as crypto/ed25519 verifies it.
	encoded [ed25519.PublicKeySize]byte
	// minusA is -A, the decoded point negated, as the verification
	// equation uses it.
	minusA edwards25519.Point
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
	k.minusA.Negate(&a)
	return k, nil
}

// verify reports whether sig is a valid Ed25519 signature of message under
// k. It answers exactly what crypto/ed25519.Verify answers for the same
// key, message and signature: pure Ed25519 (RFC 8032 section 5.1.7) with
// Go's checks, a canonical S and the cofactorless equation [S]B = R + [k]A
// compared on R's encoding.
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

	// [S]B = R + [k]A  <=>  [k](-A) + [S]B = R
	var r edwards25519.Point
	r.VarTimeDoubleScalarBaseMult(kScalar, &k.minusA, s)
	// The inputs are public, so the comparison need not be constant time
	// (crypto/ed25519 uses bytes.Equal too). Comparing encodings rejects a
	// non-canonical R, as crypto/ed25519 does.
	return bytes.Equal(sig[:32], r.Bytes())
}
