package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/wire"
)

// WaitRun watches a run's status (wire.RunStatus, written by the collector in the runs
// bucket of names) until the collector has finished the run, calling progress on each
// change. It returns the final status.
func WaitRun(ctx context.Context, js jetstream.JetStream, names wire.Names, run string, progress func(wire.RunStatus)) (wire.RunStatus, error) {
	kv, err := js.KeyValue(ctx, names.BucketRuns())
	if err != nil {
		return wire.RunStatus{}, fmt.Errorf("open kv %s: %w", names.BucketRuns(), err)
	}
	w, err := kv.Watch(ctx, run)
	if err != nil {
		return wire.RunStatus{}, fmt.Errorf("watch run %s: %w", run, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return wire.RunStatus{}, fmt.Errorf("wait for run %s: %w", run, ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return wire.RunStatus{}, fmt.Errorf("wait for run %s: watcher closed", run)
			}
			if e == nil {
				continue
			}
			var st wire.RunStatus
			if err := json.Unmarshal(e.Value(), &st); err != nil {
				continue
			}
			if progress != nil {
				progress(st)
			}
			if st.Finished {
				return st, nil
			}
		}
	}
}

// Read returns run's status record from kv (bucket mq_runs), nil when the run has none.
func Read(ctx context.Context, kv jetstream.KeyValue, run string) (*wire.RunStatus, error) {
	e, err := kv.Get(ctx, run)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read status of run %s: %w", run, err)
	}
	var st wire.RunStatus
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return nil, fmt.Errorf("decode status of run %s: %w", run, err)
	}
	return &st, nil
}
