package worker

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// keeper keeps in-flight jobs ours: one loop sends InProgress for every job held longer
// than `every` (AckWait/3), instead of a ticker goroutine per job. A call shorter than
// that sends none.
type keeper struct {
	every time.Duration
	mu    sync.Mutex
	held  map[*held]struct{}
}

type held struct {
	msg  jetstream.Msg
	last time.Time // taken, or last InProgress sent
}

func newKeeper(every time.Duration) *keeper {
	if every <= 0 {
		every = time.Second
	}
	return &keeper{every: every, held: map[*held]struct{}{}}
}

// hold starts keeping msg alive; the returned func stops it.
func (k *keeper) hold(msg jetstream.Msg) (release func()) {
	h := &held{msg: msg, last: time.Now()}
	k.mu.Lock()
	k.held[h] = struct{}{}
	k.mu.Unlock()
	return func() {
		k.mu.Lock()
		delete(k.held, h)
		k.mu.Unlock()
	}
}

// run sends the InProgress signals until ctx ends. It checks every every/4, so a job
// gets its first signal between every and 1.25 every after it was taken.
func (k *keeper) run(ctx context.Context) {
	t := time.NewTicker(k.every / 4)
	defer t.Stop()
	var due []jetstream.Msg
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			due = due[:0]
			k.mu.Lock()
			for h := range k.held {
				if now.Sub(h.last) >= k.every {
					h.last = now
					due = append(due, h.msg)
				}
			}
			k.mu.Unlock()
			for _, m := range due {
				_ = m.InProgress()
			}
		}
	}
}
