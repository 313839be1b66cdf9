// Package deploynats carries deploy/nats/accounts.conf into the binaries,
// so that ingest's embedded NATS server and a deployed cluster apply one
// definition of the users and their permissions.
package deploynats

import _ "embed"

// Accounts is accounts.conf as committed: the PAYSTREAM account with the
// ingest, worker, operator and admin users, and the SYS account. Each
// password is a variable (PAYSTREAM_NATS_<USER>_PASSWORD) that the server
// resolves from its configuration or environment.
//
//go:embed accounts.conf
var Accounts string
