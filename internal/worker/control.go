package worker

import (
	"context"
	"sync"
	"time"

	json "github.com/goccy/go-json"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/wire"
)

// controls mirrors run control records and open breakers from the runs bucket.
type controls struct {
	mu       sync.RWMutex
	runs     map[string]string
	breakers map[string]bool
}

func (c *controls) run(id string) string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.runs[id]
}

func (c *controls) breakerOpen(alias string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.breakers[alias]
}

// watchControls keeps the mirror current until ctx ends; loaded is closed once the
// current records are in (so no job is fetched before a pause is known).
func (w *Worker) watchControls(ctx context.Context, kv jetstream.KeyValue, loaded chan<- struct{}) {
	var once sync.Once
	defer once.Do(func() { close(loaded) })
	wt, err := kv.WatchFiltered(ctx, []string{wire.ControlKeyFilter, wire.BreakerKeyFilter})
	if err != nil {
		w.log.Error().Err(err).Msg("watch run controls")
		return
	}
	defer func() { _ = wt.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-wt.Updates():
			if !ok {
				return
			}
			if e == nil {
				once.Do(func() { close(loaded) })
				continue
			}
			deleted := e.Operation() != jetstream.KeyValuePut
			w.ctl.mu.Lock()
			if alias, ok := wire.ParseBreakerKey(e.Key()); ok {
				w.ctl.breakers[alias] = !deleted
			} else if run, ok := wire.ParseControlKey(e.Key()); ok {
				var c wire.Control
				if deleted || json.Unmarshal(e.Value(), &c) != nil {
					delete(w.ctl.runs, run)
				} else {
					w.ctl.runs[run] = c.State
				}
			}
			w.ctl.mu.Unlock()
		}
	}
}

// openBreaker records a deployment-wide failure: the deployment is paused fleet-wide
// and the breaker record marks its runs blocked.
func (w *Worker) openBreaker(ctx context.Context, d *deployment, depErr *llm.DeploymentError) {
	if d.fleet != nil {
		d.fleet.Block(depErr.StatusCode, w.cfg.DeploymentPause) // pauses this worker's controller too
	} else {
		d.ctrl.Pause(w.cfg.DeploymentPause)
	}
	if w.ctl.breakerOpen(d.alias) {
		return
	}
	b, _ := json.Marshal(wire.Breaker{State: wire.BreakerOpen, Status: depErr.StatusCode, Code: depErr.Code, Type: depErr.Type,
		Message: llm.Redact(depErr.Message), Since: time.Now().UTC(), Worker: w.cfg.Name})
	if _, err := w.runs.Put(ctx, wire.BreakerKey(d.alias), b); err != nil {
		w.log.Warn().Err(err).Str("deployment", d.alias).Msg("record breaker")
	}
}

// closeBreaker clears an open breaker after a successful call.
func (w *Worker) closeBreaker(ctx context.Context, d *deployment) {
	if !w.ctl.breakerOpen(d.alias) {
		return
	}
	if err := w.runs.Delete(ctx, wire.BreakerKey(d.alias)); err != nil {
		w.log.Warn().Err(err).Str("deployment", d.alias).Msg("clear breaker")
		return
	}
	w.log.Info().Str("deployment", d.alias).Msg("deployment answers again: breaker closed")
}
