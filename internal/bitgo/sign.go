package bitgo

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// BIP32 extended key version bytes.
const (
	versionXprv = 0x0488ade4
	versionTprv = 0x04358394
	versionXpub = 0x0488b21e
	versionTpub = 0x043587cf
)

// extendedKeyLen is the BIP32 serialization length without checksum.
const extendedKeyLen = 78

// maxBase58Len bounds base58 input: an extended key is 111 characters, and
// decoding is quadratic.
const maxBase58Len = 128

// messagePrefix is Bitcoin's signed-message magic, length byte included.
const messagePrefix = "\x18Bitcoin Signed Message:\n"

// signatureHexLen is the length of a hex compact recoverable signature.
const signatureHexLen = 2 * 65

// ParseSigningKey parses the key that signs allocation payloads: either a
// BIP32 extended private key (xprv..., or tprv...), whose own private key
// is used as is, without derivation, as BitGoJS does with
// bip32.fromBase58(prv).privateKey; or a 32-byte secp256k1 private key in
// hex (an optional 0x prefix and surrounding blanks are ignored). The key
// must be in [1, n-1]. Malformed input is an error that never contains the
// input, and never a panic.
func ParseSigningKey(s string) (*secp256k1.PrivateKey, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("bitgo signing key is empty")
	}
	h := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	if len(h) == 64 {
		if b, err := hex.DecodeString(h); err == nil {
			defer clear(b)
			return privateKeyFromBytes(b)
		}
	}
	if isHexString(h) {
		return nil, fmt.Errorf("bitgo signing key: hex key has %d characters, want 64", len(h))
	}
	k, err := parseExtendedPrivateKey(s)
	if err != nil {
		return nil, fmt.Errorf("bitgo signing key is neither 32-byte hex nor a valid xprv: %w", err)
	}
	return k, nil
}

func parseExtendedPrivateKey(s string) (*secp256k1.PrivateKey, error) {
	b, err := base58CheckDecode(s)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	if len(b) != extendedKeyLen {
		return nil, fmt.Errorf("extended key has %d bytes, want %d", len(b), extendedKeyLen)
	}
	switch binary.BigEndian.Uint32(b[:4]) {
	case versionXprv, versionTprv:
	case versionXpub, versionTpub:
		return nil, errors.New("it is an extended public key (xpub), a private key (xprv) is needed")
	default:
		return nil, fmt.Errorf("unknown extended key version %08x", binary.BigEndian.Uint32(b[:4]))
	}
	// Layout: version(4) depth(1) parent fingerprint(4) child number(4)
	// chain code(32) 0x00 key(32).
	if b[45] != 0 {
		return nil, errors.New("extended private key does not have the 0x00 key prefix")
	}
	return privateKeyFromBytes(b[46:78])
}

// privateKeyFromBytes rejects keys outside [1, n-1], which
// secp256k1.PrivKeyFromBytes would silently reduce.
func privateKeyFromBytes(b []byte) (*secp256k1.PrivateKey, error) {
	var buf [32]byte
	defer clear(buf[:])
	if len(b) != len(buf) {
		return nil, fmt.Errorf("private key has %d bytes, want 32", len(b))
	}
	copy(buf[:], b)
	var k secp256k1.ModNScalar
	if overflow := k.SetBytes(&buf); overflow != 0 || k.IsZero() {
		return nil, errors.New("private key is not in the secp256k1 range [1, n-1]")
	}
	return secp256k1.NewPrivateKey(&k), nil
}

const base58Alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

var base58Index = func() (idx [256]int8) {
	for i := range idx {
		idx[i] = -1
	}
	for i := 0; i < len(base58Alphabet); i++ {
		idx[base58Alphabet[i]] = int8(i)
	}
	return idx
}()

// base58Decode decodes Bitcoin base58. Errors give positions, never
// characters, because the input is secret.
func base58Decode(s string) ([]byte, error) {
	if len(s) > maxBase58Len {
		return nil, fmt.Errorf("base58 text has %d characters, at most %d expected", len(s), maxBase58Len)
	}
	zeros := 0
	for zeros < len(s) && s[zeros] == '1' {
		zeros++
	}
	// Each base58 digit carries log(58)/log(256) < 0.733 bytes.
	buf := make([]byte, len(s)*733/1000+1)
	for i := 0; i < len(s); i++ {
		v := base58Index[s[i]]
		if v < 0 {
			return nil, fmt.Errorf("character %d is not base58", i+1)
		}
		carry := int(v)
		for j := len(buf) - 1; j >= 0; j-- {
			carry += 58 * int(buf[j])
			buf[j] = byte(carry)
			carry >>= 8
		}
		if carry != 0 {
			return nil, errors.New("base58 overflow")
		}
	}
	first := 0
	for first < len(buf) && buf[first] == 0 {
		first++
	}
	out := make([]byte, zeros+len(buf)-first)
	copy(out[zeros:], buf[first:])
	clear(buf)
	return out, nil
}

// base58CheckDecode decodes base58 and checks and strips the 4-byte
// double-SHA256 checksum.
func base58CheckDecode(s string) ([]byte, error) {
	b, err := base58Decode(s)
	if err != nil {
		return nil, err
	}
	if len(b) < 4 {
		clear(b)
		return nil, errors.New("base58check text is too short")
	}
	payload, sum := b[:len(b)-4], b[len(b)-4:]
	want := doubleSHA256(payload)
	if subtle.ConstantTimeCompare(sum, want[:4]) != 1 {
		clear(b)
		return nil, errors.New("base58check checksum mismatch (typo or truncated key?)")
	}
	return payload, nil
}

func doubleSHA256(b []byte) []byte {
	h1 := sha256.Sum256(b)
	h2 := sha256.Sum256(h1[:])
	return h2[:]
}

// messageHash is the Bitcoin Signed Message digest:
// dSHA256("\x18Bitcoin Signed Message:\n" || varint(len(msg)) || msg).
func messageHash(msg []byte) []byte {
	b := make([]byte, 0, len(messagePrefix)+9+len(msg))
	b = append(b, messagePrefix...)
	b = appendVarInt(b, uint64(len(msg)))
	b = append(b, msg...)
	return doubleSHA256(b)
}

// appendVarInt appends Bitcoin's CompactSize encoding of n.
func appendVarInt(b []byte, n uint64) []byte {
	switch {
	case n < 0xfd:
		return append(b, byte(n))
	case n <= 0xffff:
		return binary.LittleEndian.AppendUint16(append(b, 0xfd), uint16(n))
	case n <= 0xffffffff:
		return binary.LittleEndian.AppendUint32(append(b, 0xfe), uint32(n))
	default:
		return binary.LittleEndian.AppendUint64(append(b, 0xff), n)
	}
}

// SignMessage signs msg as a Bitcoin Signed Message, as BitGoJS signs OFC
// payloads: deterministic (RFC 6979) ECDSA over
// dSHA256("\x18Bitcoin Signed Message:\n" || varint(len(msg)) || msg),
// returned as the lowercase hex of the 65-byte compact recoverable
// signature header||R||S, with header 27+4+recid (compressed key), i.e. 130
// characters. key must not be nil.
func SignMessage(key *secp256k1.PrivateKey, msg []byte) string {
	return hex.EncodeToString(ecdsa.SignCompact(key, messageHash(msg), true))
}

// VerifyMessage checks that sigHex, as made by SignMessage, signs msg with
// the private key of pub. It recovers the public key from the signature
// and compares it with pub. Compact headers for uncompressed keys (27..30)
// are accepted too, since they name the same key.
func VerifyMessage(pub *secp256k1.PublicKey, msg []byte, sigHex string) error {
	if pub == nil {
		return errors.New("bitgo signature: no public key to verify against")
	}
	if len(sigHex) != signatureHexLen {
		return fmt.Errorf("bitgo signature has %d hex characters, want %d", len(sigHex), signatureHexLen)
	}
	sig, err := hex.DecodeString(sigHex)
	if err != nil {
		return errors.New("bitgo signature is not hex")
	}
	if sig[0] < 27 || sig[0] > 34 {
		return fmt.Errorf("bitgo signature header byte %d is not in 27..34", sig[0])
	}
	got, _, err := ecdsa.RecoverCompact(sig, messageHash(msg))
	if err != nil {
		return fmt.Errorf("bitgo signature does not verify: %w", err)
	}
	if !got.IsEqual(pub) {
		return errors.New("bitgo signature is not by the expected key, or the message differs")
	}
	return nil
}

func isHexString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return s != ""
}
