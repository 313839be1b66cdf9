// Package cobo speaks Cobo Payments' wire formats: webhook signatures, the
// webhook envelope and its payloads, and (for allocations) API request
// signing. It decodes only the fields paystream uses, tolerantly, so new or
// partial payloads are never silently dropped.
package cobo

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Cobo's published webhook verification keys (hex Ed25519 public keys).
const (
	DevWebhookKey  = "a04ea1d5fa8da71f1dcfccf972b9c4eba0a2d8aba1f6da26f49977b08a0d2718"
	ProdWebhookKey = "8d4a482641adb2a34b726f05827dba9a9653e5857469b8749052bf4458a86729"
)

// Webhook signature headers. Cobo documents the hyphenated names; some
// deliveries and proxies use the underscore spellings, which are accepted too.
const (
	HeaderTimestamp    = "Biz-Timestamp"
	HeaderSignature    = "Biz-Resp-Signature"
	HeaderTimestampAlt = "Biz_Timestamp"
	HeaderSignatureAlt = "Biz_Resp_Signature"
)

// Signature verification errors, matched with errors.Is.
var (
	// ErrMissingSignature means a timestamp or signature header is absent.
	ErrMissingSignature = errors.New("missing signature")
	// ErrInvalidSignature means the signature is malformed or no trusted key
	// verifies it.
	ErrInvalidSignature = errors.New("invalid signature")
)

// Digest returns SHA256(SHA256(s)), the 32-byte message Cobo signs with
// Ed25519 for both webhooks and API requests.
func Digest(s []byte) []byte {
	first := sha256.Sum256(s)
	second := sha256.Sum256(first[:])
	return second[:]
}

// WebhookMessage returns the bytes Cobo signs for a webhook: the raw body,
// a "|" and the timestamp header value.
func WebhookMessage(body []byte, timestamp string) []byte {
	msg := make([]byte, 0, len(body)+1+len(timestamp))
	msg = append(msg, body...)
	msg = append(msg, '|')
	msg = append(msg, timestamp...)
	return msg
}

// webhookDigest is Digest(WebhookMessage(body, timestamp)) without the
// copy of the body: the workers verify every event they apply.
func webhookDigest(body []byte, timestamp string) []byte {
	h := sha256.New()
	h.Write(body)
	h.Write([]byte{'|'})
	h.Write([]byte(timestamp))
	first := h.Sum(nil)
	second := sha256.Sum256(first)
	return second[:]
}

// SignWebhook signs a webhook body the way Cobo does and returns the hex
// signature. The sandbox and tests use it; production only verifies.
func SignWebhook(key ed25519.PrivateKey, body []byte, timestamp string) string {
	return hex.EncodeToString(ed25519.Sign(key, Digest(WebhookMessage(body, timestamp))))
}

// Verifier checks Cobo webhook signatures against a set of trusted keys. A
// signature valid under any key is accepted, which allows key rotation.
// It is safe for concurrent use.
type Verifier struct {
	keys []verifyKey
}

// NewVerifier returns a Verifier trusting the given hex Ed25519 public keys.
// A key that is not hex, not 32 bytes or not the encoding of a curve point
// is an error naming its index: crypto/ed25519 would reject every signature
// under such a key, so trusting it can only be a configuration mistake.
func NewVerifier(hexKeys ...string) (*Verifier, error) {
	if len(hexKeys) == 0 {
		return nil, errors.New("no trusted webhook keys")
	}
	v := &Verifier{}
	for i, k := range hexKeys {
		raw, err := hex.DecodeString(strings.TrimSpace(k))
		if err != nil {
			return nil, fmt.Errorf("webhook key %d is not hex: %w", i, err)
		}
		if len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("webhook key %d has %d bytes, want %d", i, len(raw), ed25519.PublicKeySize)
		}
		vk, err := newVerifyKey(raw)
		if err != nil {
			return nil, fmt.Errorf("webhook key %d: %w", i, err)
		}
		v.keys = append(v.keys, vk)
	}
	return v, nil
}

// ParseKeyList splits a comma-separated list of hex keys, ignoring blanks.
func ParseKeyList(s string) []string {
	var out []string
	for _, k := range strings.Split(s, ",") {
		if k = strings.TrimSpace(k); k != "" {
			out = append(out, k)
		}
	}
	return out
}

// Verify checks signatureHex over body and timestamp exactly as received.
// It returns an error wrapping ErrMissingSignature or ErrInvalidSignature.
func (v *Verifier) Verify(body []byte, timestamp, signatureHex string) error {
	sig, err := parseSignatureHeaders(timestamp, signatureHex)
	if err != nil {
		return err
	}
	digest := webhookDigest(body, timestamp)
	for i := range v.keys {
		if v.keys[i].verify(digest, sig) {
			return nil
		}
	}
	return fmt.Errorf("%w: no trusted key verifies it", ErrInvalidSignature)
}

// CheckSignatureHeaders checks that both signature headers are there and
// that the signature is 64 bytes of hex, without the body, so that a
// request without them is refused before its body is read. It returns
// errors wrapping ErrMissingSignature or ErrInvalidSignature.
func CheckSignatureHeaders(timestamp, signatureHex string) error {
	_, err := parseSignatureHeaders(timestamp, signatureHex)
	return err
}

func parseSignatureHeaders(timestamp, signatureHex string) ([]byte, error) {
	if timestamp == "" {
		return nil, fmt.Errorf("%w: %s header is empty or absent", ErrMissingSignature, HeaderTimestamp)
	}
	if signatureHex == "" {
		return nil, fmt.Errorf("%w: %s header is empty or absent", ErrMissingSignature, HeaderSignature)
	}
	if len(signatureHex) != 2*ed25519.SignatureSize {
		return nil, fmt.Errorf("%w: %s has %d characters, want %d hex", ErrInvalidSignature, HeaderSignature, len(signatureHex), 2*ed25519.SignatureSize)
	}
	sig, err := hex.DecodeString(signatureHex)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not hex", ErrInvalidSignature, HeaderSignature)
	}
	return sig, nil
}

// Environments whose published webhook key TrustedKeys knows.
const (
	EnvDev  = "dev"
	EnvProd = "prod"
)

// ValidateTrust checks that the trusted webhook keys are named explicitly:
// env is dev or prod, or pubKeys replaces them (env may then be empty).
// There is no default, so that a production deployment that forgets to
// say which keys it trusts does not silently trust the dev key.
func ValidateTrust(env string, pubKeys []string) error {
	switch {
	case env == EnvDev || env == EnvProd:
		return nil
	case env != "":
		return fmt.Errorf("CoboEnv must be %s or %s, got %q", EnvDev, EnvProd, env)
	case len(pubKeys) == 0:
		return fmt.Errorf("CoboEnv or CoboPubKeys is required: no webhook key is trusted by default")
	}
	return nil
}

// TrustedKeys returns the hex webhook keys that env and pubKeys trust:
// pubKeys when given (rotation, sandbox), else Cobo's key for env.
func TrustedKeys(env string, pubKeys []string) []string {
	switch {
	case len(pubKeys) > 0:
		return pubKeys
	case env == EnvProd:
		return []string{ProdWebhookKey}
	case env == EnvDev:
		return []string{DevWebhookKey}
	}
	return nil
}
