// Package allocation decides and carries out fund allocations: the rules
// file and the amounts it yields, and the exactly-once delivery of
// allocation items to Cobo (batched) and BitGo.
//
// Each role has its own file:
//
//   - rules.go: the rules file, split amounts and the items an order's
//     completion or late payment makes (Rules, the handlers' Planner);
//   - batcher.go: the Cobo batcher, from intents to persisted, claimed
//     batches, their sends, lookups, splits and polls, to outcomes on the
//     orders, and stuck items;
//   - bitgo_sender.go: the BitGo sender and its persisted requests;
//   - resources.go: the stream, consumers and buckets (EnsureResources),
//     the outbox that publishes planned items and the orphan sweep;
//   - metrics.go: the Prometheus metrics of all of them;
//   - senders.go: what both senders share: checking an intent against its
//     order and recording outcomes on orders.
package allocation
