package allocation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rs/zerolog"

	"github.com/paystream/paystream/internal/cobo"
	"github.com/paystream/paystream/internal/domain"
)

// A Cobo item is recorded failed only when Cobo certainly did not make it:
// Cobo reported the item (or its whole batch) Failed, or Cobo refused a
// batch that certainly does not exist. Everything else is reconciled (the
// request_id lookup), waits (credentials, no answer, items Cobo has not
// finished) or alerts (stuck items), and nothing is given up on:
//
//   - A send's answer that is not definite (5xx, 429, timeouts, a lost
//     answer) leaves the batch ready; it is sent again, always with its
//     request_id, after a backoff.
//   - A refusal (4xx) of a send that may follow an effective one (any
//     resend, or an answer to a retry within one call: Batch.MayExist)
//     is checked with the request_id lookup first. So is any answer whose
//     code may mean "request_id already used" (12009, 2040, 30001), which
//     Cobo also uses for other things: found means created; only an empty
//     lookup, made at least SettleAfter after a send that may be in
//     progress, means the batch certainly does not exist.
//   - A refusal of paystream's credentials (401, 403, signature, nonce or
//     key codes) or of the endpoint never fails anything: the items wait,
//     an error is logged, paystream_cobo_credential_errors_total and the
//     waiting-batches gauge rise, and the batch is sent again with its
//     request_id until the credentials work.
//   - A batch that certainly does not exist and holds several items is
//     split in halves, each persisted with a new request_id (its items'
//     claims moved to it) before its first send, so that one item Cobo
//     refuses ends failed alone and the others complete.
//   - A batch Cobo created finishes its items from their statuses when
//     Cobo gives them; without a status field (Cobo's answers before SDK
//     v1.39, and the reference seeds), ledger-only items are complete.
//     Items Cobo has not finished are polled, with a backoff capped at
//     RetryMax, for ever.

// deliver takes a persisted batch as far as it can go now: it sends a
// ready batch, checks a refused one, splits one Cobo certainly refused,
// polls a sent one, and records outcomes on the orders. It returns when
// the batch is retired or waits (Batch.NextAt). Each step is persisted
// before it is acted on, so any batcher can resume the batch after a
// crash, and every send of one batch carries its one request_id.
func (b *Batcher) deliver(ctx context.Context, batch *Batch, rev uint64) {
	log := b.cfg.Logger.With().Str("request_id", batch.RequestID).Int("items", len(batch.Items)).Logger()
	for ctx.Err() == nil {
		moved := false
		switch batch.Status {
		case BatchReady:
			rev, moved = b.send(ctx, batch, rev, log)
		case BatchChecking:
			rev, moved = b.check(ctx, batch, rev, log)
		case BatchSplitting:
			b.split(ctx, batch, rev, log)
		case BatchSent, BatchRejected:
			b.finish(ctx, batch, rev, log)
		default:
			log.Error().Str("status", batch.Status).Msg("batch in an unknown state; left as it is for an operator")
		}
		if !moved {
			return
		}
	}
}

// send sends a ready batch with its request_id and classifies the answer.
// It reports whether the batch moved on (persisted in another status).
func (b *Batcher) send(ctx context.Context, batch *Batch, rev uint64, log zerolog.Logger) (uint64, bool) {
	// Persisted before sending: whoever resumes the batch after a crash
	// during the send knows that Cobo may hold it.
	batch.MayExist = batch.MayExist || batch.InFlight
	batch.InFlight = true
	batch.Attempts++
	rev, err := b.store.put(ctx, batch, rev)
	if err != nil {
		log.Warn().Err(err).Msg("could not note the send before making it; the batch is left for a later try")
		return rev, false
	}
	sctx, cancel := context.WithTimeout(ctx, b.cfg.SendTimeout)
	res, err := b.api.CreateBatchAllocation(sctx, toRequest(batch))
	cancel()
	batch.LastSendAt, batch.InFlight = time.Now().UTC(), false

	var apiErr *cobo.APIError
	isAPI := errors.As(err, &apiErr)
	if err != nil && (!isAPI || apiErr.Retryable() || apiErr.Retried) {
		// An attempt of this call got no definite answer: it may have
		// created the batch.
		batch.MayExist = true
	}
	switch {
	case err == nil:
		b.created(batch, res)
	case !isAPI || apiErr.Retryable():
		// No definite answer. Sent again later with the same request_id:
		// if this attempt created the batch, Cobo says so then.
		b.wait(batch, err, log)
	case apiErr.CredentialProblem() || apiErr.EndpointProblem():
		// Cobo did not read the request, but an earlier send may have
		// been read and created the batch.
		if batch.MayExist {
			if found, ferr := b.lookup(ctx, batch); ferr == nil {
				log.Info().Str("batch_allocation_id", found.BatchAllocationID).Int("http_status", apiErr.HTTPStatus).Int("error_code", apiErr.Code).
					Msg("cobo refused a resend, but an earlier send had created the batch")
				b.created(batch, found)
				break
			}
		}
		b.wait(batch, err, log)
	case apiErr.DuplicateRequest() && errors.Is(err, cobo.ErrBatchNotFound) && !batch.MayExist:
		// The first and only send was answered with a code that may mean
		// "request_id already used", and no batch has the request_id: the
		// code meant something else (30001 is also "pricing plan does not
		// support this feature").
		b.refused(batch, apiErr.Error(), log)
	case apiErr.DuplicateRequest() || batch.MayExist:
		// Cobo may hold the batch: look it up before anything else, and
		// never send it again.
		batch.Status, batch.Rejection = BatchChecking, apiErr.Error()
		log.Warn().Err(err).Bool("may_exist", batch.MayExist).Msg("cobo refused a send that may have been created before; looking the batch up by request_id")
	default:
		// A definite refusal of a request Cobo never saw before.
		b.refused(batch, apiErr.Error(), log)
	}
	return b.persistStep(ctx, batch, rev, BatchReady, log)
}

// check looks a batch Cobo refused up by request_id: found means created;
// certainly absent means refused, unless a send may still be in progress
// at Cobo (MayExist, within SettleAfter of the last send), when it waits.
func (b *Batcher) check(ctx context.Context, batch *Batch, rev uint64, log zerolog.Logger) (uint64, bool) {
	found, err := b.lookup(ctx, batch)
	switch {
	case err == nil:
		log.Info().Str("batch_allocation_id", found.BatchAllocationID).Msg("the refused batch exists at cobo: recorded as sent")
		b.created(batch, found)
	case errors.Is(err, cobo.ErrBatchNotFound):
		settled := batch.LastSendAt.Add(b.cfg.SettleAfter)
		if batch.MayExist && time.Now().Before(settled) {
			batch.Waiting, batch.NextAt = WaitSettling, settled
			log.Info().Time("look_again_at", settled).Msg("no batch has the request_id yet, but an earlier send may still be in progress at cobo; looking again later")
			break
		}
		b.refused(batch, batch.rejection(), log)
	default:
		b.wait(batch, err, log)
	}
	return b.persistStep(ctx, batch, rev, BatchChecking, log)
}

// persistStep writes the batch after a send or check. A batch still in
// from (waiting) is scheduled with backoff, unless a wait set NextAt. It
// reports whether the batch moved on.
func (b *Batcher) persistStep(ctx context.Context, batch *Batch, rev uint64, from string, log zerolog.Logger) (uint64, bool) {
	moved := batch.Status != from
	if moved {
		batch.Retries, batch.NextAt, batch.Waiting = 0, time.Time{}, ""
	} else if batch.Waiting != WaitSettling {
		batch.Retries++
		batch.NextAt = time.Now().Add(b.backoff(batch.Retries)).UTC()
	}
	next, err := b.store.put(ctx, batch, rev)
	if err != nil {
		// Nothing is lost: the batch is tried again from its persisted
		// state, with the same request_id, and a created batch is found.
		log.Warn().Err(err).Str("status", batch.Status).Msg("could not persist the batch's step; it will be tried again with the same request_id")
		return rev, false
	}
	return next, moved
}

// lookup finds the batch by request_id with the send timeout.
func (b *Batcher) lookup(ctx context.Context, batch *Batch) (cobo.BatchAllocation, error) {
	sctx, cancel := context.WithTimeout(ctx, b.cfg.SendTimeout)
	defer cancel()
	found, err := b.api.FindBatchAllocation(sctx, batch.RequestID)
	if err != nil {
		return found, fmt.Errorf("look up batch %s: %w", batch.RequestID, err)
	}
	return found, nil
}

// created records that Cobo holds the batch: a 201, or found by
// request_id.
func (b *Batcher) created(batch *Batch, res cobo.BatchAllocation) {
	batch.Status, batch.ProviderStatus = BatchSent, res.Status
	if res.BatchAllocationID != "" {
		batch.BatchAllocationID = res.BatchAllocationID
	}
	batch.Waiting, batch.Rejection, batch.LastError = "", "", ""
	b.metrics().batchSize.Observe(float64(len(batch.Items)))
}

// refused settles a batch Cobo refused and certainly does not hold: one
// item is rejected (recorded failed with Cobo's answer); several are split
// in halves under new request_ids.
func (b *Batcher) refused(batch *Batch, reason string, log zerolog.Logger) {
	batch.Rejection, batch.Waiting = reason, ""
	if len(batch.Items) == 1 {
		batch.Status = BatchRejected
		return
	}
	batch.Status = BatchSplitting
	batch.Children = []string{newRequestID(), newRequestID()}
	log.Warn().Str("rejection", reason).Strs("children", batch.Children).
		Msg("cobo refused the batch and holds nothing for it; splitting it so that the valid items still complete")
}

// wait notes why the batch did not move on, logs it, and counts refused
// credentials.
func (b *Batcher) wait(batch *Batch, err error, log zerolog.Logger) {
	batch.Waiting, batch.LastError = waitReason(err), err.Error()
	ev := log.Warn()
	msg := "no definite answer from cobo; the batch is tried again later, a send always with the same request_id"
	switch batch.Waiting {
	case WaitCredentials:
		b.metrics().cobo.credentialErrors.Inc()
		ev = log.Error()
		msg = "cobo refused paystream's API credentials; the items wait (never failed) and the batch is sent again with the same request_id: check -cobo-api-secret-file, the key registered in Cobo Portal for this environment and its permissions, and the clock"
	case WaitEndpoint:
		ev = log.Error()
		msg = "cobo answered that the request went to the wrong place or in the wrong form; the items wait: check -cobo-api-url"
	}
	ev.Err(err).Str("status", batch.Status).Int("attempts", batch.Attempts).Int("retries", batch.Retries).Msg(msg)
}

// waitReason classifies an error that left a batch where it was.
func waitReason(err error) string {
	var apiErr *cobo.APIError
	if errors.As(err, &apiErr) {
		switch {
		case apiErr.CredentialProblem():
			return WaitCredentials
		case apiErr.EndpointProblem():
			return WaitEndpoint
		}
	}
	return WaitProvider
}

// rejection is Cobo's refusal of the batch; LastError for batches
// rejected before Rejection existed.
func (b *Batch) rejection() string {
	if b.Rejection != "" {
		return b.Rejection
	}
	return b.LastError
}

// split moves a splitting batch's items into its two children, each
// persisted and claimed before the parent is retired, then sends them.
// Any step may be redone by any batcher: the children's request_ids are
// the parent's persisted Children, and claims move with compare-and-set.
func (b *Batcher) split(ctx context.Context, batch *Batch, rev uint64, log zerolog.Logger) {
	if len(batch.Children) != 2 || len(batch.Items) < 2 {
		log.Error().Strs("children", batch.Children).Msg("splitting batch without two children and two items; left as it is for an operator")
		return
	}
	half := len(batch.Items) / 2
	parts := [][]domain.AllocationItem{batch.Items[:half], batch.Items[half:]}
	children := make([]*Batch, 0, 2)
	revs := make([]uint64, 0, 2)
	for i, id := range batch.Children {
		c, crev, err := b.child(ctx, batch, id, parts[i])
		if err != nil {
			log.Warn().Err(err).Str("child", id).Msg("could not prepare half of the split batch; the split is finished later")
			return
		}
		children, revs = append(children, c), append(revs, crev)
	}
	if err := b.store.remove(ctx, batch.RequestID); err != nil {
		log.Warn().Err(err).Msg("could not retire the split batch; its halves are sent anyway")
	}
	b.metrics().cobo.splits.Inc()
	log.Info().Strs("children", batch.Children).Msg("batch split")
	for i, c := range children {
		if c.Status != BatchClaiming && len(c.Items) > 0 {
			b.deliver(ctx, c, revs[i])
		}
	}
}

// child returns the half of parent with request_id id, creating and
// claiming it when needed.
func (b *Batcher) child(ctx context.Context, parent *Batch, id string, items []domain.AllocationItem) (*Batch, uint64, error) {
	c, rev, err := b.store.get(ctx, id)
	if errors.Is(err, domain.ErrNotFound) {
		now := time.Now().UTC()
		c = &Batch{RequestID: id, Status: BatchClaiming, Items: slices.Clone(items), Parent: parent.RequestID,
			ItemsSince: parent.itemsSince(), CreatedAt: now}
		rev, err = b.store.put(ctx, c, 0)
		if errors.Is(err, domain.ErrConflict) {
			// Another batcher finishing the same split created it.
			c, rev, err = b.store.get(ctx, id)
		}
	}
	if err != nil {
		return nil, 0, err
	}
	if c.Status == BatchClaiming {
		rev, err = b.settleClaims(ctx, c, rev)
	}
	return c, rev, err
}

// finish polls a sent batch whose items are not all final, records the
// outcomes on the orders, and retires the batch once every item is final
// (or it was rejected). Otherwise the batch is polled again after a
// backoff capped at RetryMax, for ever.
func (b *Batcher) finish(ctx context.Context, batch *Batch, rev uint64, log zerolog.Logger) {
	progressed := false
	if batch.Status == BatchSent && !allItemsFinal(batch) {
		changed, err := b.poll(ctx, batch)
		if err != nil {
			b.wait(batch, err, log)
		} else {
			progressed, batch.Waiting, batch.LastError = changed, "", ""
		}
	}
	if err := b.record(ctx, batch); err != nil {
		log.Warn().Err(err).Msg("recording the outcome on orders failed; will retry")
		return
	}
	if batch.Status == BatchRejected || allItemsFinal(batch) {
		if err := b.store.remove(ctx, batch.RequestID); err != nil {
			log.Warn().Err(err).Msg("could not retire the recorded batch")
		}
		return
	}
	// Items still Pending or Transferring at Cobo.
	if progressed {
		batch.Retries = 0
	}
	batch.Retries++
	batch.NextAt = time.Now().Add(b.backoff(batch.Retries)).UTC()
	if _, err := b.store.put(ctx, batch, rev); err != nil {
		log.Warn().Err(err).Msg("could not persist polled statuses")
	}
}

// poll refreshes statuses from GET /payments/batch_allocations/{id} (or,
// without an id, the request_id lookup) and reports whether any changed.
func (b *Batcher) poll(ctx context.Context, batch *Batch) (bool, error) {
	sctx, cancel := context.WithTimeout(ctx, b.cfg.SendTimeout)
	defer cancel()
	var detail cobo.BatchAllocation
	var err error
	if batch.BatchAllocationID != "" {
		detail, err = b.api.GetBatchAllocation(sctx, batch.BatchAllocationID)
	} else {
		// Cobo's create answer carried no id: the list view has the batch
		// status, enough for items without their own.
		detail, err = b.api.FindBatchAllocation(sctx, batch.RequestID)
		batch.BatchAllocationID = detail.BatchAllocationID
	}
	if err != nil {
		return false, fmt.Errorf("poll batch %s: %w", batch.RequestID, err)
	}
	changed := detail.Status != batch.ProviderStatus
	batch.ProviderStatus = detail.Status
	used := make([]bool, len(detail.AllocationItems))
	for i := range batch.Items {
		it := &batch.Items[i]
		for j, p := range detail.AllocationItems {
			if !used[j] && sameItem(*it, p) {
				used[j] = true
				changed = changed || it.ProviderStatus != p.Status
				it.ProviderStatus = p.Status
				it.ProviderID = p.AllocationItemID
				break
			}
		}
	}
	return changed, nil
}

func sameItem(it domain.AllocationItem, p cobo.AllocationItem) bool {
	return p.Description == it.Description && p.DestinationAccount == it.Destination &&
		p.SourceAccount == it.Source && p.TokenID == it.TokenID && amountEqual(p.Amount, it)
}

func amountEqual(s string, it domain.AllocationItem) bool {
	var a cobo.Amount
	if err := a.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil || !a.Valid {
		return false
	}
	return a.Decimal.Equal(it.Amount)
}

// itemStatus maps the batch's knowledge of an item to paystream's status
// and, for a failure, its reason. Items of a batch Cobo does not hold (yet)
// are planned.
func itemStatus(batch *Batch, it domain.AllocationItem) (string, string) {
	switch batch.Status {
	case BatchRejected:
		return domain.AllocFailed, "refused by cobo, which holds no batch for it: " + batch.rejection()
	case BatchSent:
		return coboItemStatus(it.ProviderStatus, batch.ProviderStatus)
	}
	return domain.AllocPlanned, ""
}

// coboItemStatus maps the statuses Cobo gives an item of a batch it
// created, and the batch, to paystream's. An item's own status decides;
// without one, the batch's does; without either (Cobo's answers before
// the status fields, and the reference seeds) the item is completed, as
// ledger-only allocations complete at once. Cobo's words for unfinished
// items, and words paystream does not know, are pending: polled, and
// reported stuck if they last.
func coboItemStatus(item, batch string) (string, string) {
	switch item {
	case cobo.ItemCompleted:
		return domain.AllocCompleted, ""
	case cobo.ItemFailed:
		return domain.AllocFailed, "cobo reported the item Failed"
	case "":
		switch batch {
		case "", cobo.BatchCompleted:
			return domain.AllocCompleted, ""
		case cobo.BatchFailed:
			// Cobo: Failed means all items failed.
			return domain.AllocFailed, "cobo reported the batch Failed"
		}
	}
	return domain.AllocPending, ""
}

// openItems are the batch's items not final by its own knowledge.
func openItems(batch *Batch) []domain.AllocationItem {
	var out []domain.AllocationItem
	for _, it := range batch.Items {
		if st, _ := itemStatus(batch, it); st != domain.AllocCompleted && st != domain.AllocFailed {
			out = append(out, it)
		}
	}
	return out
}

func allItemsFinal(batch *Batch) bool { return len(openItems(batch)) == 0 }

// record writes each item's outcome on its order, with compare-and-set.
// Items still planned (the batch is not at Cobo) are not written.
func (b *Batcher) record(ctx context.Context, batch *Batch) error {
	byOrder := map[string][]domain.AllocationItem{}
	var orderIDs []string
	for _, it := range batch.Items {
		if byOrder[it.OrderID] == nil {
			orderIDs = append(orderIDs, it.OrderID)
		}
		byOrder[it.OrderID] = append(byOrder[it.OrderID], it)
	}
	for _, orderID := range orderIDs {
		if err := b.recordOrder(ctx, batch, orderID, byOrder[orderID]); err != nil {
			return err
		}
	}
	return nil
}

func (b *Batcher) recordOrder(ctx context.Context, batch *Batch, orderID string, items []domain.AllocationItem) error {
	inBatch := make(map[string]domain.AllocationItem, len(items))
	for _, it := range items {
		inBatch[it.ID] = it
	}
	changed, err := updateItems(ctx, b.orders, orderID, func(cur *domain.AllocationItem) bool {
		it, ok := inBatch[cur.ID]
		if !ok {
			return false
		}
		st, reason := itemStatus(batch, it)
		if st == domain.AllocPlanned || (cur.Status == st && cur.RequestID == batch.RequestID && cur.ProviderStatus == it.ProviderStatus) {
			return false
		}
		cur.Status, cur.Reason = st, reason
		cur.RequestID = batch.RequestID
		cur.ProviderID = batch.BatchAllocationID
		cur.ProviderStatus = it.ProviderStatus
		if cur.Final() {
			cur.StuckSince = nil
		}
		return true
	})
	if err != nil {
		return err
	}
	for _, it := range changed {
		b.metrics().items.WithLabelValues(domain.BackendCobo, it.Status).Inc()
		ev := b.cfg.Logger.Info()
		if it.Status == domain.AllocFailed {
			ev = b.cfg.Logger.Error()
			if batch.Status == BatchRejected {
				b.metrics().cobo.itemsRefused.WithLabelValues(domain.BackendCobo).Inc()
			}
		}
		ev.Str("order_id", orderID).Str("item_id", it.ID).Str("request_id", batch.RequestID).
			Str("batch_allocation_id", batch.BatchAllocationID).Str("amount", it.Amount.String()).Str("token_id", it.TokenID).
			Str("destination", it.Destination).Str("status", it.Status).Str("reason", it.Reason).Msg("allocation item recorded")
	}
	return nil
}
