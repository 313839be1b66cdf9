package bitgo

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/stretchr/testify/require"
)

// BIP32 test vector 1.
const (
	vector1Xprv = "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi"
	// corruptedXprv is vector1Xprv with a mangled tail (as once quoted in a
	// task brief); its checksum fails.
	corruptedXprv  = "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LN7ZS97yg1xS7qk7JrjDosEVwtvbYKq4zfQ"
	vector1Key     = "e8f32e723decf4051aefac8e2c93c9c5b214313817cdb01a1494b917c8436b35"
	vector1Pub     = "0339a36013301597daef41fbe593a02cc513d0b55527ec2df1050e2e8ff49c85c2"
	vector1Xpub    = "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8"
	vector1ChildH0 = "xprv9uHRZZhk6KAJC1avXpDAp4MDc3sQKNxDiPvvkX8Br5ngLNv1TxvUxt4cV1rGL5hj6KCesnDYUhd7oWgT11eZG7XnxHrnYeSvkzY7d2bhkJ7"
	vector1H0Key   = "edb2e14f9ee77d26dd93b4ecede8d16ed408ce149b6cd80b0715a2d911a0afea"
	// curveOrder is secp256k1's n, one past the largest private key.
	curveOrder = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"
)

// base58CheckEncode is the inverse of base58CheckDecode, for building test
// keys.
func base58CheckEncode(t *testing.T, payload []byte) string {
	t.Helper()
	b := append(append([]byte{}, payload...), doubleSHA256(payload)[:4]...)
	zeros := 0
	for zeros < len(b) && b[zeros] == 0 {
		zeros++
	}
	digits := []byte{}
	for _, v := range b {
		carry := int(v)
		for i := range digits {
			carry += int(digits[i]) << 8
			digits[i] = byte(carry % 58)
			carry /= 58
		}
		for carry > 0 {
			digits = append(digits, byte(carry%58))
			carry /= 58
		}
	}
	var sb strings.Builder
	sb.WriteString(strings.Repeat("1", zeros))
	for i := len(digits) - 1; i >= 0; i-- {
		sb.WriteByte(base58Alphabet[digits[i]])
	}
	return sb.String()
}

func keyHex(k *secp256k1.PrivateKey) string {
	return hex.EncodeToString(k.Serialize())
}

func TestParseSigningKeyGood(t *testing.T) {
	t.Parallel()
	xprvPayload, err := base58CheckDecode(vector1Xprv)
	require.NoError(t, err)
	tprvPayload := append([]byte{}, xprvPayload...)
	binary.BigEndian.PutUint32(tprvPayload, versionTprv)
	tprv := base58CheckEncode(t, tprvPayload)
	require.Equal(t, vector1Xprv, base58CheckEncode(t, xprvPayload), "test encoder round trip")

	cases := []struct{ name, in, want string }{
		{"xprv root", vector1Xprv, vector1Key},
		{"xprv with blanks", "  " + vector1Xprv + "\n", vector1Key},
		{"tprv", tprv, vector1Key},
		{"non-root xprv used as is", vector1ChildH0, vector1H0Key},
		{"hex", vector1Key, vector1Key},
		{"upper hex", strings.ToUpper(vector1Key), vector1Key},
		{"0x hex", "0x" + vector1Key, vector1Key},
		{"one", strings.Repeat("0", 63) + "1", strings.Repeat("0", 63) + "1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseSigningKey(tc.in)
			require.NoError(t, err)
			require.Equal(t, tc.want, keyHex(k))
		})
	}

	k, err := ParseSigningKey(vector1Xprv)
	require.NoError(t, err)
	require.Equal(t, vector1Pub, hex.EncodeToString(k.PubKey().SerializeCompressed()))
}

func TestParseSigningKeyBad(t *testing.T) {
	t.Parallel()
	payload, err := base58CheckDecode(vector1Xprv)
	require.NoError(t, err)
	withKeyPrefix := append([]byte{}, payload...)
	withKeyPrefix[45] = 1
	unknownVersion := append([]byte{}, payload...)
	binary.BigEndian.PutUint32(unknownVersion, 0x01020304)
	outOfRange := append([]byte{}, payload...)
	copy(outOfRange[46:], mustHex(t, curveOrder))
	// Flip the last character to another valid base58 digit.
	last := vector1Xprv[len(vector1Xprv)-1]
	flipped := vector1Xprv[:len(vector1Xprv)-1] + string(map[bool]byte{true: 'R', false: 'Q'}[last == 'Q'])

	cases := []struct{ name, in, errHas string }{
		{"empty", "", "empty"},
		{"blank", " \t", "empty"},
		{"short hex", vector1Key[:62], "62 characters"},
		{"long hex", vector1Key + "00", "66 characters"},
		{"zero", strings.Repeat("0", 64), "range"},
		{"order", curveOrder, "range"},
		{"above order", "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "range"},
		{"xpub", vector1Xpub, "public key"},
		{"bad checksum", flipped, "checksum"},
		{"corrupted vector", corruptedXprv, "checksum"},
		{"not base58", "xprv0OIl", "not base58"},
		{"truncated", vector1Xprv[:60], "checksum"},
		{"too long", strings.Repeat("x", 200), "at most"},
		{"short payload", base58CheckEncode(t, payload[:40]), "40 bytes"},
		{"key prefix", base58CheckEncode(t, withKeyPrefix), "0x00 key prefix"},
		{"unknown version", base58CheckEncode(t, unknownVersion), "unknown extended key version"},
		{"xprv out of range", base58CheckEncode(t, outOfRange), "range"},
		{"tiny", "zz", "too short"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseSigningKey(tc.in)
			require.Error(t, err)
			require.Nil(t, k)
			require.Contains(t, err.Error(), tc.errHas)
			if len(strings.TrimSpace(tc.in)) >= 16 {
				require.NotContains(t, err.Error(), strings.TrimSpace(tc.in), "errors must not echo key material")
			}
		})
	}
}

func FuzzParseSigningKey(f *testing.F) {
	f.Add(vector1Xprv)
	f.Add(vector1Xpub)
	f.Add(vector1Key)
	f.Add("0x" + curveOrder)
	f.Add("")
	f.Add("xprv")
	f.Add("111111111111111111111111111111111111111111111111111111111111111111111111111111111")
	f.Add("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseSigningKey(s)
		if err != nil {
			require.Nil(t, k)
			if in := strings.TrimSpace(s); len(in) >= 16 {
				require.NotContains(t, err.Error(), in)
			}
			return
		}
		require.NotNil(t, k)
		require.False(t, k.Key.IsZero())
	})
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	require.NoError(t, err)
	return b
}

func TestAppendVarInt(t *testing.T) {
	t.Parallel()
	cases := []struct {
		n    uint64
		want string
	}{
		{0, "00"},
		{0xfc, "fc"},
		{0xfd, "fdfd00"},
		{0xffff, "fdffff"},
		{0x10000, "fe00000100"},
		{0x100000000, "ff0000000001000000"},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, hex.EncodeToString(appendVarInt(nil, tc.n)), "n=%d", tc.n)
	}
}

// TestSignMessageKnownAnswer checks against bitcoinjs-message's README
// example, the library BitGoJS signs with.
func TestSignMessageKnownAnswer(t *testing.T) {
	t.Parallel()
	wif, err := base58CheckDecode("L4rK1yDtCWekvXuE6oXD9jCYfFNV2cWRpVuPLBcCU2z8TrisoyY1")
	require.NoError(t, err)
	require.Len(t, wif, 34) // 0x80 || key || 0x01 (compressed)
	key, err := privateKeyFromBytes(wif[1:33])
	require.NoError(t, err)

	want, err := base64.StdEncoding.DecodeString("H9L5yLFjti0QTHhPyFrZCT1V/MMnBtXKmoiKDZ78NDBjERki6ZTQZdSMCtkgoNmp17By9ItJr8o7ChX0XxY91nk=")
	require.NoError(t, err)
	msg := []byte("This is an example of a signed message.")
	require.Equal(t, hex.EncodeToString(want), SignMessage(key, msg))
}

func TestSignVerifyMessage(t *testing.T) {
	t.Parallel()
	key, err := ParseSigningKey(vector1Xprv)
	require.NoError(t, err)
	other, err := secp256k1.GeneratePrivateKey()
	require.NoError(t, err)

	for _, msg := range [][]byte{
		[]byte(`{"connectionId":"c","nonce":"n"}`),
		{},
		[]byte(strings.Repeat("a", 300)), // three-byte varint length
	} {
		sig := SignMessage(key, msg)
		require.Len(t, sig, 130)
		require.Equal(t, strings.ToLower(sig), sig)
		header := mustHex(t, sig[:2])[0]
		require.GreaterOrEqual(t, header, byte(31))
		require.LessOrEqual(t, header, byte(34))
		require.Equal(t, sig, SignMessage(key, msg), "RFC 6979 signatures are deterministic")

		require.NoError(t, VerifyMessage(key.PubKey(), msg, sig))
		require.Error(t, VerifyMessage(other.PubKey(), msg, sig), "wrong key")
		require.Error(t, VerifyMessage(key.PubKey(), append([]byte("x"), msg...), sig), "tampered message")
	}

	msg := []byte("payload")
	sig := SignMessage(key, msg)
	bad := []struct{ name, sig string }{
		{"empty", ""},
		{"short", sig[:128]},
		{"not hex", "zz" + sig[2:]},
		{"header 26", "1a" + sig[2:]},
		{"header 35", "23" + sig[2:]},
		{"other recid", hex.EncodeToString([]byte{31 + (mustHex(t, sig[:2])[0]-31+1)%4}) + sig[2:]},
		{"zero r and s", sig[:2] + strings.Repeat("0", 128)},
	}
	for _, tc := range bad {
		require.Error(t, VerifyMessage(key.PubKey(), msg, tc.sig), tc.name)
	}
	require.Error(t, VerifyMessage(nil, msg, sig))
}
