// Package lease owns single-active leadership over a JetStream KV key: the holder created
// the key (first writer wins) and keeps it alive by compare-and-set updates; the bucket's
// TTL expires it when the holder dies. No home-made consensus: JetStream's is used.
package lease

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/queue"
)

// DefaultTTL is how long a lease outlives its holder's last refresh.
const DefaultTTL = 10 * time.Second

// ErrLost means the holder could not keep its lease: it must stop acting as active.
var ErrLost = errors.New("lease lost")

// BucketConfig is the configuration of the lease bucket named bucket (a deployment's
// wire.Names.BucketLease) for a TTL (0: DefaultTTL).
func BucketConfig(bucket string, replicas int, ttl time.Duration) jetstream.KeyValueConfig {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return jetstream.KeyValueConfig{Bucket: bucket, Description: "single-active leases",
		TTL: ttl, History: 1, Storage: jetstream.FileStorage, Replicas: max(replicas, 1)}
}

// Ensure returns the lease bucket named bucket, creating it with the given TTL (0: DefaultTTL) when
// it does not exist. Every holder of the bucket's leases should use the same TTL: when
// the bucket's differs, Ensure updates it, and if this NATS user may not (a role without
// stream-admin rights), logs a warning and goes on (Hold fences on the shorter of the
// two, so a longer bucket TTL only slows a takeover).
func Ensure(ctx context.Context, js jetstream.JetStream, bucket string, replicas int, ttl time.Duration, log zerolog.Logger) (jetstream.KeyValue, error) {
	cfg := BucketConfig(bucket, replicas, ttl)
	var kv jetstream.KeyValue
	err := queue.Retry(ctx, func(ctx context.Context) error {
		var err error
		kv, err = js.KeyValue(ctx, bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			kv, err = js.CreateKeyValue(ctx, cfg)
			if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				kv, err = js.KeyValue(ctx, bucket)
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ensure kv %s: %w", bucket, err)
	}
	b, err := bucketInfo(ctx, kv)
	if err != nil {
		return nil, err
	}
	if b.ttl != cfg.TTL {
		uctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if ukv, err := js.UpdateKeyValue(uctx, cfg); err == nil {
			kv = ukv
		} else {
			log.Warn().Err(err).Stringer("bucket_ttl", b.ttl).Stringer("lease_ttl", cfg.TTL).
				Msg("lease bucket has another TTL and could not be updated (provision it with the collectors' --lease-ttl)")
		}
	}
	return kv, nil
}

// Hold waits until it holds the lease named key, then runs fn with a context that is
// cancelled as soon as the lease cannot be kept, and with the holder's Fence, which every
// side effect of fn must pass (see Fence). It releases the lease when fn returns.
func Hold(ctx context.Context, kv jetstream.KeyValue, key, holder string, ttl time.Duration, log zerolog.Logger, fn func(ctx context.Context, f *Fence) error) error {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	// The fence must close before the server can expire the key: use the bucket's own
	// TTL if another holder configured it shorter.
	bucket, err := bucketInfo(ctx, kv)
	if err != nil {
		return err
	}
	if bucket.ttl > 0 && bucket.ttl < ttl {
		ttl = bucket.ttl
	}
	f := newFence(ttl, bucket.id, monotonic())
	began := f.clock()
	for {
		sent := f.clock()
		r, err := kv.Create(ctx, key, []byte(holder))
		if err == nil {
			f.epoch, f.rev = r, r
			f.renewed.Store(int64(sent))
			break
		}
		if !queue.IsKeyExists(err) && ctx.Err() == nil {
			log.Warn().Err(err).Msg("lease: create")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(500*time.Millisecond, ttl/5)):
		}
	}
	f.waited = f.clock() - began
	log.Info().Str("lease", key).Stringer("waited", f.waited).Uint64("epoch", f.epoch).Msg("lease acquired: active")
	actx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.keep(actx, kv, key, holder, log, cancel)
	}()
	err = fn(actx, f)
	lost := errors.Is(context.Cause(actx), ErrLost) || errors.Is(err, ErrLost) || f.Check() != nil
	cancel(nil)
	<-done
	if lost {
		if err == nil || !errors.Is(err, ErrLost) {
			err = errors.Join(err, ErrLost)
		}
		return fmt.Errorf("%s: %w", key, err)
	}
	// Hand over at once rather than after the TTL.
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer dcancel()
	if derr := kv.Delete(dctx, key, jetstream.LastRevision(f.rev)); derr != nil {
		log.Debug().Err(derr).Msg("lease: release")
	}
	return err
}

// keep refreshes the lease every TTL/5 by compare-and-set until ctx ends; it cancels
// ctx with ErrLost once the key is someone else's or the fence has closed.
func (f *Fence) keep(ctx context.Context, kv jetstream.KeyValue, key, holder string, log zerolog.Logger, cancel context.CancelCauseFunc) {
	t := time.NewTicker(f.ttl / 5)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := f.clock()
		rctx, rcancel := context.WithTimeout(ctx, f.ttl/5)
		r, err := kv.Update(rctx, key, []byte(holder), f.rev)
		rcancel()
		if err == nil && f.Check() == nil {
			f.rev = r
			f.renewed.Store(int64(sent))
			continue
		}
		if err == nil {
			// Refreshed, but too late: the key may have expired and been taken over
			// in between. Never reopen a closed fence.
			err = f.Check()
		}
		if queue.IsKeyExists(err) && f.Check() == nil {
			// The revision moved on. While the fence is open the key cannot have
			// expired, and other holders only create it: if it still names this
			// holder, an earlier refresh of ours was applied and its reply lost (a
			// NATS restart, a request flushed after reconnecting). Carry on from its
			// revision; the fence still counts from the last acknowledged refresh.
			gctx, gcancel := context.WithTimeout(ctx, f.ttl/5)
			e, gerr := kv.Get(gctx, key)
			gcancel()
			if gerr == nil && string(e.Value()) == holder && e.Revision() > f.rev {
				log.Warn().Uint64("revision", e.Revision()).Str("lease", key).Msg("lease: a refresh's reply was lost; continuing from its revision")
				f.rev = e.Revision()
				continue
			}
		}
		if queue.IsKeyExists(err) || errors.Is(err, jetstream.ErrKeyNotFound) || f.Check() != nil {
			f.lost.Store(true)
			log.Error().Err(err).Str("lease", key).Msg("lease lost: stopping")
			cancel(ErrLost)
			return
		}
	}
}

// Fence is the holder's proof that it still holds the lease, checked immediately before
// every side effect (a file write, a rename, a KV write, a message delete).
//
// It is closed once TTL-Margin has passed since the last refresh was *sent* (on the
// local monotonic clock), or once a refresh failed for good. The server cannot expire
// the key before TTL after that refresh arrived, so a holder that was stalled (SIGSTOP,
// a VM pause, swap) finds its fence closed on waking, before a successor can have taken
// over, and refuses every side effect. Once closed it never reopens.
//
// Epoch is the KV revision at which the lease was created: a later holder always has a
// larger one (revisions of a bucket only grow), so records written under the lease can
// carry it and refuse to be overwritten by an older holder. Bucket identifies the lease
// bucket (its creation time): epochs of different buckets do not compare.
type Fence struct {
	ttl, margin time.Duration
	clock       func() time.Duration
	epoch, rev  uint64
	bucket      string
	waited      time.Duration
	renewed     atomic.Int64 // clock() when the last successful refresh was sent
	lost        atomic.Bool
}

func newFence(ttl time.Duration, bucket string, clock func() time.Duration) *Fence {
	return &Fence{ttl: ttl, margin: Margin(ttl), clock: clock, bucket: bucket}
}

// Margin is how long before the earliest possible expiry a holder stops acting: room
// for the time between a fence check and the side effect it guards, and for clock rate
// differences between hosts.
func Margin(ttl time.Duration) time.Duration { return ttl / 4 }

// Check returns nil while the holder may act, and an error wrapping ErrLost once not.
// A nil Fence (no lease in use) always passes.
func (f *Fence) Check() error {
	if f == nil {
		return nil
	}
	if f.lost.Load() {
		return fmt.Errorf("fenced: %w", ErrLost)
	}
	if age := f.clock() - time.Duration(f.renewed.Load()); age > f.ttl-f.margin {
		f.lost.Store(true)
		return fmt.Errorf("fenced: lease not refreshed for %s (limit %s): %w", age.Round(time.Millisecond), f.ttl-f.margin, ErrLost)
	}
	return nil
}

// Epoch is the holder's fencing token (0 for a nil Fence).
func (f *Fence) Epoch() uint64 {
	if f == nil {
		return 0
	}
	return f.epoch
}

// Bucket identifies the lease bucket the epoch belongs to ("" for a nil Fence).
func (f *Fence) Bucket() string {
	if f == nil {
		return ""
	}
	return f.bucket
}

// Waited is how long the holder stood by before it took the lease.
func (f *Fence) Waited() time.Duration {
	if f == nil {
		return 0
	}
	return f.waited
}

func monotonic() func() time.Duration {
	base := time.Now()
	return func() time.Duration { return time.Since(base) }
}

type bucket struct {
	ttl time.Duration
	id  string
}

// bucketInfo reads the bucket's TTL and identity (the creation time of its stream).
func bucketInfo(ctx context.Context, kv jetstream.KeyValue) (bucket, error) {
	var st jetstream.KeyValueStatus
	err := queue.Retry(ctx, func(ctx context.Context) error {
		var err error
		st, err = kv.Status(ctx)
		return err
	})
	if err != nil {
		return bucket{}, fmt.Errorf("lease bucket status: %w", err)
	}
	b := bucket{ttl: st.TTL()}
	if s, ok := st.(interface{ StreamInfo() *jetstream.StreamInfo }); ok && s.StreamInfo() != nil {
		b.id = s.StreamInfo().Created.UTC().Format(time.RFC3339Nano)
	}
	return b, nil
}
