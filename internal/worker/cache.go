package worker

import (
	"context"
	"errors"
	"time"

	json "github.com/goccy/go-json"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/wire"
)

// The prompt cache (docs/WIRE.md, "Prompt cache"). A job whose pipeline has the cache
// on (wire.Job.Cache) is looked up in bucket wire.BucketCache under wire.CacheKey of
// its request before it takes a throttle permit: an answer stored less than the job's
// ttl ago that parses into the job's output fields answers it, with no call and no
// permit, through the same final result and ack as a call's answer (marked cached).
// Otherwise the job takes its permit and calls, and an answer that parsed is stored,
// best effort: the cache never fails or delays a job for long.
//
// Runs whose jobs use the cache are fetched without permits (fetchLoop): a job found in
// the cache needs none, and one that is not takes its permit here, before its call (a
// pool's job: the permit of a member with spare capacity, pool.go).

// promptCache is the worker's side of the prompt cache.
type promptCache struct {
	kv       jetstream.KeyValue // nil until Run opened the bucket
	maxValue int                // the largest entry stored: the server's max_payload less headroom
	now      func() time.Time
	m        cacheMetrics
}

// cacheMetrics count the cache per deployment; the hit ratio is hits / (hits + misses).
type cacheMetrics struct {
	hits, misses, stores, storeFailures, tooLarge *prometheus.CounterVec
}

func newCacheMetrics() cacheMetrics {
	vec := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"deployment"})
	}
	return cacheMetrics{
		hits:          vec("mq_worker_cache_hits_total", "Jobs answered from the prompt cache (no call, no throttle permit)."),
		misses:        vec("mq_worker_cache_misses_total", "Jobs with the cache on not answered from it (no entry, older than the ttl, not parsing, or a failed read): they call."),
		stores:        vec("mq_worker_cache_stores_total", "Answers stored in the prompt cache."),
		storeFailures: vec("mq_worker_cache_store_failures_total", "Answers that could not be stored in the prompt cache (the job is not affected)."),
		tooLarge:      vec("mq_worker_cache_too_large_total", "Answers not stored in the prompt cache: larger than a NATS message allows."),
	}
}

func (m cacheMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.hits, m.misses, m.stores, m.storeFailures, m.tooLarge}
}

// init makes every series of a deployment exist from the start (a ratio over a series
// that appears late reads as no data).
func (m cacheMetrics) init(alias string) {
	for _, v := range []*prometheus.CounterVec{m.hits, m.misses, m.stores, m.storeFailures, m.tooLarge} {
		v.WithLabelValues(alias)
	}
}

// cacheTimeout bounds one read or write of the cache.
const cacheTimeout = 2 * time.Second

// cacheHeadroom is what a KV put needs besides its value in one message (subject,
// headers).
const cacheHeadroom = 1024

// open opens the cache bucket (the deployment's wire.Names.BucketCache, created by
// queue.Ensure) and sizes entries by the server's max_payload.
func (c *promptCache) open(ctx context.Context, js jetstream.JetStream, bucket string) error {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return err
	}
	c.kv = kv
	c.maxValue = int(js.Conn().MaxPayload()) - cacheHeadroom
	return nil
}

// lookup returns the job's answer from the cache, parsed into its output fields; ok is
// false for a miss: no entry, an entry older than the job's ttl or not parsing into its
// outputs (another query with the same prompt and other fields), or a failed read.
func (c *promptCache) lookup(ctx context.Context, alias, model string, job *wire.Job, log zerolog.Logger) (e wire.CacheEntry, fields map[string]json.RawMessage, ok bool) {
	defer func() {
		if ok {
			c.m.hits.WithLabelValues(alias).Inc()
		} else {
			c.m.misses.WithLabelValues(alias).Inc()
		}
	}()
	key := wire.CacheKey(model, job.Request)
	if key == "" || c.kv == nil {
		return e, nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, cacheTimeout)
	defer cancel()
	entry, err := c.kv.Get(ctx, key)
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			log.Debug().Err(err).Msg("prompt cache read; calling")
		}
		return e, nil, false
	}
	if err := wire.Decode(entry.Value(), &e); err != nil { // a newer entry's too: call
		log.Debug().Err(err).Msg("prompt cache entry undecodable; calling")
		return e, nil, false
	}
	if c.now().Sub(e.Stored) > job.Cache.TTL() {
		return e, nil, false
	}
	fields, err = llm.ParseAnswer(e.Content, job.Outputs)
	if err != nil {
		return e, nil, false
	}
	return e, fields, true
}

// store keeps a call's answer, which parsed into the job's output fields. A failure is
// counted and logged, never the job's.
func (c *promptCache) store(ctx context.Context, alias, model string, job *wire.Job, ans *llm.Answer, log zerolog.Logger) {
	key := wire.CacheKey(model, job.Request)
	if key == "" || c.kv == nil {
		return
	}
	b, err := json.Marshal(wire.CacheEntry{V: wire.Version, Content: ans.Content, FinishReason: ans.FinishReason, Model: ans.Model,
		Usage: ans.Usage, Stored: c.now().UTC()})
	if err != nil {
		c.m.storeFailures.WithLabelValues(alias).Inc()
		return
	}
	if len(b) > c.maxValue {
		c.m.tooLarge.WithLabelValues(alias).Inc()
		return
	}
	ctx, cancel := context.WithTimeout(ctx, cacheTimeout)
	defer cancel()
	if _, err := c.kv.Put(ctx, key, b); err != nil {
		c.m.storeFailures.WithLabelValues(alias).Inc()
		log.Debug().Err(err).Msg("prompt cache store")
		return
	}
	c.m.stores.WithLabelValues(alias).Inc()
}

// fromCache answers a job from the cache when its pipeline has the cache on and the
// cache has its answer: the final result (cached) is published and the job acked, as
// after a call. It reports whether it did; false: the job calls.
func (w *Worker) fromCache(ctx context.Context, dl *delivery) bool {
	job := dl.job
	dl.fetchedFor().cacheRun(job.Run, job.Cache != nil)
	if job.Cache == nil {
		return false
	}
	began := time.Now()
	alias, model := dl.cacheTarget()
	e, fields, ok := w.cache.lookup(ctx, alias, model, job, dl.log)
	if !ok {
		return false
	}
	w.audit.cached(job, dl.attempt, w.cfg.Name, e.Content, time.Since(began))
	usage := e.Usage
	res := &wire.Result{OK: true, Fields: fields, Usage: &usage, Model: e.Model, Cached: true}
	// A redelivery may have paid for calls before (429s): they stay in the result.
	st := w.stateOf(ctx, job, dl.attempt)
	w.final(ctx, dl.msg, job, res, nil, dl.attempt, st.spent(), spend{}, dl.log)
	return true
}

// toCache stores a call's answer, which parsed into the job's outputs, when the job's
// pipeline has the cache on.
func (w *Worker) toCache(ctx context.Context, dl *delivery, ans *llm.Answer) {
	if dl.job.Cache != nil {
		alias, model := dl.cacheTarget()
		w.cache.store(ctx, alias, model, dl.job, ans, dl.log)
	}
}

// fetchedFor is the deployment whose runs the delivery was fetched from: the pool for
// a pool's job, else the alias.
func (dl *delivery) fetchedFor() *deployment {
	if dl.pool != nil {
		return dl.pool
	}
	return dl.d
}

// cacheTarget is the deployment a delivery's cache metrics name and the model its
// cache key holds: the alias and the model its client sends; for a pool's job, the
// pool and the job's model, whichever member calls (the members serve the same model,
// and a job is looked up before a member is chosen).
func (dl *delivery) cacheTarget() (alias, model string) {
	if dl.pool != nil {
		return dl.pool.alias, dl.job.Request.Model
	}
	return dl.d.alias, dl.d.client.Model(dl.job.Request)
}

// permit takes the throttle permit of a delivery fetched without one (its run's jobs
// use the cache) that the cache did not answer, then decides again (the deployment may
// have paused meanwhile). It reports whether the call may go ahead; false: the delivery
// has ended (NAKed).
func (w *Worker) permit(ctx context.Context, dl *delivery, in *outcomeInput) bool {
	unhold := w.keep.hold(dl.msg)
	var err error
	if dl.pool != nil {
		err = w.memberPermit(ctx, dl)
	} else {
		err = dl.d.waitPermit(ctx)
	}
	unhold()
	if err != nil { // the drain timeout: give it back, nothing was spent
		_ = dl.msg.Nak()
		return false
	}
	if dl.pool == nil { // a pool's member is not paused: it was chosen for that
		in.pausedFor = dl.d.ctrl.PausedFor()
	}
	if out := decide(*in); out.act != actCall {
		w.act(ctx, dl, out, nil, spend{}, spend{})
		return false
	}
	return true
}

// cacheRun records whether a run's jobs use the cache: such runs are fetched without
// permits.
func (d *deployment) cacheRun(run string, on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, rc := range d.runs {
		if rc.run == run {
			rc.cache = on
			return
		}
	}
}

// splitCached splits a rotation into the runs whose jobs use the cache (fetched
// without permits) and the others, each in rotation order.
func (d *deployment) splitCached(runs []*runConsumer) (cached, paced []*runConsumer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, rc := range runs {
		if rc.cache {
			cached = append(cached, rc)
		} else {
			paced = append(paced, rc)
		}
	}
	return cached, paced
}
