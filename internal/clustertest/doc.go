// Package clustertest holds tests only: they run paystream's real ingest and
// workers against three-node JetStream clusters started in the test process
// from the committed deploy/nats configuration, so that the accounts and
// permissions operators deploy are the ones proven here, and so that node
// failures and worker churn are exercised against real replication.
package clustertest
