package console

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/paystream/paystream/internal/events"
)

// watchRetry is how long the watch waits before binding the bucket again
// or restarting after its subscription closed.
const watchRetry = time.Second

// watchOrders feeds the index from the orders bucket until ctx ends: it
// waits for the bucket (the workers create it), then watches every key:
// first the stored orders (the index is ready once they are in), then
// each change as the workers commit it. Should the watch end for any
// other reason, it starts again and the new load replaces the old one.
func (c *Console) watchOrders(ctx context.Context) {
	log := c.cfg.Logger
	var kv jetstream.KeyValue
	for logged := false; ; {
		var err error
		kv, err = c.js.KeyValue(ctx, events.OrdersBucket)
		if err == nil {
			break
		}
		if !logged {
			log.Info().Err(err).Msg("console waiting for the orders bucket (the workers create it)")
			logged = true
		}
		if !sleepCtx(ctx, watchRetry) {
			return
		}
	}
	c.orders.Store(events.NewOrderStore(kv))
	for ctx.Err() == nil {
		if err := c.watchOnce(ctx, kv); err != nil && ctx.Err() == nil {
			log.Warn().Err(err).Msg("orders watch ended; starting again")
		}
		if !sleepCtx(ctx, watchRetry) {
			return
		}
	}
}

// watchOnce runs one watch until ctx ends or its subscription closes.
func (c *Console) watchOnce(ctx context.Context, kv jetstream.KeyValue) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	c.index.BeginLoad()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch subscription closed")
			}
			if e == nil {
				// Every order stored when the watch began is in.
				c.index.EndLoad()
				continue
			}
			c.apply(e)
		}
	}
}

// apply records one entry of the bucket in the index.
func (c *Console) apply(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		c.index.Delete(e.Key(), e.Revision())
		return
	}
	o, err := decodeIndexed(e.Value())
	if err != nil {
		// The workers wrote it, so this does not happen; the order page
		// still reads it from the bucket.
		c.cfg.Logger.Warn().Err(err).Str("key", e.Key()).Uint64("revision", e.Revision()).Msg("order not indexed")
		return
	}
	if o.OrderID == "" {
		o.OrderID = e.Key()
	}
	c.index.Put(OrderFields{OrderID: o.OrderID, MerchantID: o.merchant(), Status: string(o.Status), Allocations: o.Allocations}, e.Revision(), e.Created())
}

// sleepCtx waits d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
