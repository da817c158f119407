package worker

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// watchRuns follows run open records (replayed from the start, so runs opened before
// this worker started are found too). For each alias a run names: a served alias gets
// the run's job consumer added to its fetch rotation; an alias no worker has ever served
// has its jobs failed with unknown_deployment (never left waiting forever). It also keeps
// the fleet registry of served aliases fresh. Jobs name aliases only: a worker never
// sends a key to an endpoint a job names.
func (w *Worker) watchRuns(ctx, callCtx context.Context) {
	fleet, err := w.js.KeyValue(ctx, w.names.BucketFleet())
	if err != nil {
		w.log.Error().Err(err).Msg("open fleet registry")
		return
	}
	register := func() {
		for _, alias := range w.servedNames() {
			v := mustJSON(map[string]any{"worker": w.cfg.Name, "seen": time.Now().UTC()})
			if _, err := fleet.Put(ctx, alias, v); err != nil && ctx.Err() == nil {
				w.log.Warn().Err(err).Str("deployment", alias).Msg("fleet registry refresh")
			}
		}
	}
	register()
	var wg sync.WaitGroup
	defer wg.Wait()

	cons, err := w.js.OrderedConsumer(ctx, w.names.StreamInput(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{w.names.InputOpenFilter()}})
	if err != nil {
		w.log.Error().Err(err).Msg("watch run records")
		return
	}
	opens := make(chan wire.Open, 64)
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		var o wire.Open
		if err := wire.Decode(msg.Data(), &o); err != nil || !wire.ValidToken(o.Run) {
			return
		}
		select {
		case opens <- o:
		case <-ctx.Done():
		}
	})
	if err != nil {
		w.log.Error().Err(err).Msg("watch run records")
		return
	}
	defer cc.Stop()
	tick := time.NewTicker(queue.FleetRefresh)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			register()
		case o := <-opens:
			if w.cfg.Run != "" && o.Run != w.cfg.Run {
				continue
			}
			for _, alias := range o.Deployments {
				if !wire.ValidToken(alias) {
					continue
				}
				if pl, ok := o.PoolOf(alias); ok && w.servePool(ctx, pl, o.Run) {
					register() // a pool with a member served here (pool.go)
					continue
				}
				if d, ok := w.deps[alias]; ok {
					c, err := queue.EnsureJobConsumer(ctx, w.js, w.cfg.Topology, alias, o.Run)
					if err != nil {
						w.log.Error().Err(err).Str("run", o.Run).Msg("job consumer")
						continue
					}
					if w.finished(ctx, o.Run) {
						// Finished since its open record was read: the collector purged
						// the run before deleting its consumers, so this one is new. Go.
						_ = w.js.DeleteConsumer(ctx, w.names.StreamJobs(), queue.JobConsumerName(alias, o.Run))
						continue
					}
					d.addRun(o.Run, c)
					continue
				}
				if served(ctx, fleet, alias) {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					w.rejectAlias(ctx, callCtx, fleet, alias, o.Run, o.Created)
				}()
			}
		}
	}
}

func served(ctx context.Context, fleet jetstream.KeyValue, alias string) bool {
	_, err := fleet.Get(ctx, alias)
	return err == nil
}

// rejectAlias fails the jobs of one run for a never-served alias until a worker serving
// it shows up or the run's backlog stays empty for a while. It waits UnknownAliasGrace
// after the run opened first, so a fleet rolled out together with its first run is not
// raced. Several workers may do it at once: results are first-writer-wins.
func (w *Worker) rejectAlias(ctx, callCtx context.Context, fleet jetstream.KeyValue, alias, run string, opened time.Time) {
	log := w.log.With().Str("deployment", alias).Str("run", run).Logger()
	for wait := time.Until(opened.Add(w.cfg.UnknownAliasGrace)); wait > 0 && ctx.Err() == nil; wait = time.Until(opened.Add(w.cfg.UnknownAliasGrace)) {
		sleep(ctx, min(wait, time.Second))
		if served(ctx, fleet, alias) {
			return
		}
	}
	log.Error().Msg("a run names a deployment alias no worker serves: its jobs fail with unknown_deployment")
	cons, err := queue.EnsureJobConsumer(ctx, w.js, w.cfg.Topology, alias, run)
	if err != nil {
		log.Error().Err(err).Msg("consumer for unknown alias")
		return
	}
	idle := 0
	for ctx.Err() == nil && idle < 30 && !served(ctx, fleet, alias) {
		batch, err := cons.Fetch(64, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			sleep(ctx, time.Second)
			idle++
			continue
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			_, addr, err := w.names.ParseJobSubject(msg.Subject())
			if err != nil {
				out := decide(outcomeInput{job: jobPoison, cause: err.Error()})
				w.poison(callCtx, alias, msg, addr, err, err, out.err, log)
				continue
			}
			job := wire.Job{Run: addr.Run, Row: addr.Row, Query: addr.Query, Deployment: alias, Data: wire.RowData(msg.Data())}
			out := decide(outcomeInput{job: jobUnservedAlias, alias: alias})
			w.final(callCtx, msg, &job, nil, out.err, 1, spend{}, spend{}, log)
		}
		if n == 0 {
			idle++
		} else {
			idle = 0
		}
	}
}
