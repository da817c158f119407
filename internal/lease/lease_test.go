package lease

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.uber.org/goleak"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.LeakOptions()...)
}

// The fence closes TTL-Margin after the last refresh was sent, earlier than the server
// can expire the key, and never reopens.
func TestFenceClosesBeforeTheLeaseCanExpire(t *testing.T) {
	t.Parallel()
	var now time.Duration
	f := newFence(10*time.Second, "b", func() time.Duration { return now })
	f.renewed.Store(int64(now))
	if err := f.Check(); err != nil {
		t.Fatalf("just refreshed: %v", err)
	}
	now = 10*time.Second - Margin(10*time.Second)
	if err := f.Check(); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	now += time.Millisecond
	if err := f.Check(); !errors.Is(err, ErrLost) {
		t.Fatalf("past TTL-margin: got %v, want ErrLost", err)
	}
	f.renewed.Store(int64(now)) // a late refresh must not reopen it
	if err := f.Check(); !errors.Is(err, ErrLost) {
		t.Fatalf("reopened by a late refresh: %v", err)
	}
	var none *Fence
	if err := none.Check(); err != nil || none.Epoch() != 0 {
		t.Fatalf("nil fence: %v, epoch %d", err, none.Epoch())
	}
}

// A later holder's epoch is larger than an earlier one's: it is a fencing token.
func TestLaterHolderHasLargerEpoch(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	kv, err := Ensure(ctx, js, wire.BucketLease, 1, 2*time.Second, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var epochs []uint64
	var bucket string
	for _, name := range []string{"a", "b"} {
		err := Hold(ctx, kv, "k", name, 2*time.Second, zerolog.Nop(), func(_ context.Context, f *Fence) error {
			if err := f.Check(); err != nil {
				return err
			}
			if bucket != "" && f.Bucket() != bucket {
				t.Errorf("bucket id changed: %q -> %q", bucket, f.Bucket())
			}
			bucket = f.Bucket()
			epochs = append(epochs, f.Epoch())
			return nil
		})
		if err != nil {
			t.Fatalf("hold %s: %v", name, err)
		}
	}
	if bucket == "" || len(epochs) != 2 || epochs[1] <= epochs[0] {
		t.Fatalf("epochs %v (bucket %q): want increasing, non-empty bucket id", epochs, bucket)
	}
}

// A refresh the server applied but whose reply the holder never got (sent just before a
// NATS restart, or buffered by the client while it reconnected and flushed after the
// holder's request had timed out) moves the key's revision on without the holder
// knowing. The key is still the holder's and no one else can have taken it (the fence is
// open): the holder keeps its lease instead of stopping. A key that now names another
// holder is still lost.
func TestARefreshWhoseReplyWasLostKeepsTheLease(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx := context.Background()
	const ttl = 2 * time.Second
	kv, err := Ensure(ctx, js, wire.BucketLease, 1, ttl, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	refreshes := func() { time.Sleep(3 * ttl / 5) } // three refresh periods of TTL/5

	err = Hold(ctx, kv, "k", "a", ttl, zerolog.Nop(), func(ctx context.Context, f *Fence) error {
		e, err := kv.Get(ctx, "k")
		if err != nil {
			return err
		}
		if _, err := kv.Update(ctx, "k", []byte("a"), e.Revision()); err != nil { // a's own refresh, reply lost
			return err
		}
		refreshes()
		if ctx.Err() != nil || f.Check() != nil {
			t.Errorf("a refresh whose reply was lost lost the lease: %v, fence %v", context.Cause(ctx), f.Check())
		}
		return nil
	})
	if err != nil {
		t.Fatalf("hold a: %v", err)
	}

	err = Hold(ctx, kv, "k", "c", ttl, zerolog.Nop(), func(ctx context.Context, f *Fence) error {
		if _, err := kv.Put(ctx, "k", []byte("someone-else")); err != nil {
			return err
		}
		refreshes()
		if ctx.Err() == nil {
			t.Errorf("a key that names another holder kept the lease")
		}
		return nil
	})
	if !errors.Is(err, ErrLost) {
		t.Fatalf("hold c after another holder's write: %v, want ErrLost", err)
	}
}
