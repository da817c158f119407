// Package lease owns single-active leadership over a JetStream KV key: the holder created
// the key (first writer wins) and keeps it alive by compare-and-set updates; the bucket's
// TTL expires it when the holder dies. No home-made consensus: JetStream's is used.
package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/queue"
)

// Bucket is the KV bucket of leases.
const Bucket = "mq_lease"

// DefaultTTL is how long a lease outlives its holder's last refresh.
const DefaultTTL = 10 * time.Second

// ErrLost means the holder could not keep its lease: it must stop acting as active.
var ErrLost = errors.New("lease lost")

// Ensure creates the lease bucket with the given TTL (0: DefaultTTL). Every holder of
// the bucket's leases must use the same TTL.
func Ensure(ctx context.Context, js jetstream.JetStream, replicas int, ttl time.Duration) (jetstream.KeyValue, error) {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	var kv jetstream.KeyValue
	err := queue.Retry(ctx, func(ctx context.Context) error {
		var err error
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: Bucket, Description: "single-active leases",
			TTL: ttl, History: 1, Storage: jetstream.FileStorage, Replicas: max(replicas, 1)})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ensure kv %s: %w", Bucket, err)
	}
	return kv, nil
}

// Hold waits until it holds the lease named key, then runs fn with a context that is
// cancelled as soon as the lease cannot be kept (refreshes fail for TTL/2). It releases
// the lease when fn returns. waited is how long it stood by.
func Hold(ctx context.Context, kv jetstream.KeyValue, key, holder string, ttl time.Duration, log zerolog.Logger, fn func(ctx context.Context, waited time.Duration) error) error {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	began := time.Now()
	var rev uint64
	for {
		r, err := kv.Create(ctx, key, []byte(holder))
		if err == nil {
			rev = r
			break
		}
		if !queue.IsKeyExists(err) && ctx.Err() == nil {
			log.Warn().Err(err).Msg("lease: create")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	waited := time.Since(began)
	log.Info().Str("lease", key).Dur("waited", waited).Msg("lease acquired: active")
	actx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := time.Now()
		t := time.NewTicker(ttl / 5)
		defer t.Stop()
		for {
			select {
			case <-actx.Done():
				return
			case <-t.C:
			}
			r, err := kv.Update(actx, key, []byte(holder), rev)
			if err == nil {
				rev, last = r, time.Now()
				continue
			}
			if queue.IsKeyExists(err) || errors.Is(err, jetstream.ErrKeyNotFound) || time.Since(last) > ttl/2 {
				log.Error().Err(err).Str("lease", key).Msg("lease lost: stopping")
				cancel(ErrLost)
				return
			}
		}
	}()
	err := fn(actx, waited)
	lost := errors.Is(context.Cause(actx), ErrLost)
	cancel(nil)
	<-done
	if lost {
		return fmt.Errorf("%s: %w", key, ErrLost)
	}
	// Hand over at once rather than after the TTL.
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer dcancel()
	if derr := kv.Delete(dctx, key, jetstream.LastRevision(rev)); derr != nil {
		log.Debug().Err(derr).Msg("lease: release")
	}
	return err
}
