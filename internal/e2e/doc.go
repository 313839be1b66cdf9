// Package e2e holds end-to-end tests of paystream: signed webhooks through
// the real ingest service into an embedded JetStream, and real workers
// turning them into order state.
package e2e
