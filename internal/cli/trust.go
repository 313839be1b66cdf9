package cli

import (
	"fmt"

	"github.com/paystream/paystream/internal/cobo"
)

// CoboTrust holds the flags naming the Cobo webhook keys a command trusts:
// ingest verifies webhooks with them, workers and replay re-verify stored
// events with them.
type CoboTrust struct {
	env, pubKey *string
}

// CoboTrustFlags defines -cobo-env and -cobo-pubkey on fs. Neither has a
// default: a command that needs them refuses to start without one.
func CoboTrustFlags(fs *Flags) *CoboTrust {
	return &CoboTrust{
		env:    fs.String("cobo-env", "PAYSTREAM_COBO_ENV", "", "trust Cobo's published webhook key for dev or prod (required unless -cobo-pubkey)"),
		pubKey: fs.String("cobo-pubkey", "PAYSTREAM_COBO_PUBKEY", "", "comma-separated hex Ed25519 keys replacing the trusted set (rotation, sandbox)"),
	}
}

// Env is -cobo-env as given.
func (c *CoboTrust) Env() string { return *c.env }

// PubKeys is -cobo-pubkey split into keys.
func (c *CoboTrust) PubKeys() []string { return cobo.ParseKeyList(*c.pubKey) }

// Verifier checks the flags and returns a verifier trusting their keys.
// Its errors name the flags.
func (c *CoboTrust) Verifier() (*cobo.Verifier, error) {
	switch env := c.Env(); {
	case env == "" && len(c.PubKeys()) == 0:
		return nil, fmt.Errorf("-cobo-env %s|%s or -cobo-pubkey is required: no Cobo webhook key is trusted by default", cobo.EnvDev, cobo.EnvProd)
	case cobo.ValidateTrust(env, c.PubKeys()) != nil:
		return nil, fmt.Errorf("-cobo-env: want %s or %s, got %q", cobo.EnvDev, cobo.EnvProd, env)
	}
	v, err := cobo.NewVerifier(cobo.TrustedKeys(c.Env(), c.PubKeys())...)
	if err != nil {
		return nil, fmt.Errorf("-cobo-pubkey: %w", err)
	}
	return v, nil
}
