// Package worker owns the job lifecycle on the worker side: pull only as many jobs as
// there are free slots and pacing permits, call the model, classify the outcome, and map
// it to exactly one queue action (publish the final result then ack, NAK with delay, or
// terminate a poison message). Retry state that must survive redelivery lives in KV.
package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/throttle"
	"github.com/multiquery/multiquery/internal/wire"
)

// Deployment is one alias this worker serves.
type Deployment struct {
	LLM            llm.Options
	Throttle       throttle.Params
	MaxConcurrency int // 0 = the worker's Concurrency
	// Prices, when set, give the estimated cost of the tokens (mq_worker_cost_usd_total).
	Prices Prices
}

// Config configures a worker process.
type Config struct {
	Name         string // worker id in results and logs; default hostname-pid
	Concurrency  int    // slots per deployment
	Deployments  []Deployment
	Topology     queue.Topology
	DrainTimeout time.Duration // SIGTERM: how long in-flight calls may finish
	MaxNakDelay  time.Duration // cap on one NAK delay
	// HardDeliverCap fails a job that was delivered this many times (crash-loop backstop
	// below the consumer's MaxDeliver).
	HardDeliverCap uint64
	// TransientBackoff is the first transient retry delay (doubles per attempt, cap 30 s).
	TransientBackoff time.Duration
	// DeploymentPause is how long jobs wait after a deployment-wide error (401/403/404,
	// insufficient_quota) before being retried.
	DeploymentPause time.Duration
	// UnknownAliasGrace is how long after a run opened its jobs for an alias no worker
	// has ever served are left waiting before they fail with unknown_deployment.
	UnknownAliasGrace time.Duration
	// PausedRunDelay is the NAK delay of a paused run's jobs (resume takes effect within it).
	PausedRunDelay time.Duration
	// IdleRunAfter is how long a run's consumer may have nothing to deliver before the
	// worker stops polling it (default 1 min): the run goes dormant and its consumer
	// expires after Topology.JobConsumerInactive. DormantCheck is how often a dormant
	// run is checked for new jobs (default 5 s, doubling per empty check up to 5 min);
	// a finished run (its records purged) is dropped.
	IdleRunAfter time.Duration
	DormantCheck time.Duration
	// Naive turns the fleet throttle off (a baseline for benchmarks): no pacing, no
	// shared signal, a fixed NAK delay on capacity errors.
	Naive bool
	// Run, when set, is the only run this worker serves: the open records of other runs
	// are skipped (local mode: a command runs its own run, not another one left in its
	// store).
	Run string
}

// DefaultConcurrency is the in-flight calls per deployment when Config.Concurrency (the
// worker's --concurrency) is not set.
const DefaultConcurrency = 32

// DefaultDrainTimeout is how long in-flight calls may finish on SIGTERM when
// Config.DrainTimeout (the worker's --drain-timeout) is not set.
const DefaultDrainTimeout = 30 * time.Second

// NaiveNakDelay is the fixed capacity NAK delay of the naive baseline.
const NaiveNakDelay = time.Second

func (c *Config) defaults() {
	if c.Name == "" {
		h, _ := os.Hostname()
		c.Name = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.MaxNakDelay <= 0 {
		c.MaxNakDelay = 60 * time.Second
	}
	if c.HardDeliverCap == 0 {
		c.HardDeliverCap = 900
	}
	if c.TransientBackoff <= 0 {
		c.TransientBackoff = time.Second
	}
	if c.DeploymentPause <= 0 {
		c.DeploymentPause = 15 * time.Second
	}
	if c.PausedRunDelay <= 0 {
		c.PausedRunDelay = 30 * time.Second
	}
	if c.UnknownAliasGrace <= 0 {
		c.UnknownAliasGrace = 30 * time.Second
	}
	if c.IdleRunAfter <= 0 {
		c.IdleRunAfter = time.Minute
	}
	if c.DormantCheck <= 0 {
		c.DormantCheck = 5 * time.Second
	}
	c.Topology = c.Topology.Defaults()
}

// Validate checks the configuration; errors name the field.
func (c *Config) Validate() error {
	var errs []error
	if c.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("concurrency: must be >= 1, got %d", c.Concurrency))
	}
	if len(c.Deployments) == 0 {
		errs = append(errs, errors.New("deployments: at least one is required"))
	}
	seen := map[string]bool{}
	for _, d := range c.Deployments {
		if !wire.ValidToken(d.LLM.Alias) {
			errs = append(errs, fmt.Errorf("deployments.%s: alias must match [A-Za-z0-9_-]+", d.LLM.Alias))
		}
		if seen[d.LLM.Alias] {
			errs = append(errs, fmt.Errorf("deployments.%s: duplicate alias", d.LLM.Alias))
		}
		seen[d.LLM.Alias] = true
		if err := d.Throttle.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("deployments.%s.throttle: %w", d.LLM.Alias, err))
		}
		if d.Prices.PromptPer1K < 0 || d.Prices.CompletionPer1K < 0 {
			errs = append(errs, fmt.Errorf("deployments.%s.prices: must be >= 0, got %+v", d.LLM.Alias, d.Prices))
		}
	}
	return errors.Join(errs...)
}

// Worker serves the configured deployments.
type Worker struct {
	cfg   Config
	names wire.Names // cfg.Topology.Names
	js    jetstream.JetStream
	log   zerolog.Logger
	retry jetstream.KeyValue
	runs  jetstream.KeyValue
	// results and input are read to skip a call whose result is stored, and to tell a
	// finished run (its records are purged).
	results jetstream.Stream
	input   jetstream.Stream
	jobs    jetstream.Stream
	ctl     controls
	audit   *auditor
	keep    *keeper
	deps    map[string]*deployment
	// pools are the deployment pools served here (pool.go), created as runs name them;
	// launch starts a pool's fetch loop.
	poolsMu sync.Mutex
	pools   map[string]*deployment
	launch  func(p *deployment)
	m       *metrics
	cache   promptCache
	started atomic.Bool // fetching: the /readyz condition
}

// Started reports whether the worker is fetching jobs (Run is past its setup and not
// draining): the /readyz condition.
func (w *Worker) Started() bool { return w.started.Load() }

type deployment struct {
	alias  string
	client *llm.Client
	ctrl   *throttle.Controller
	fleet  *throttle.Fleet // nil in naive mode
	slots  int
	prices Prices
	// tokens is the deployment's token gate (tokens.go; nil in naive mode); pool, the
	// members of a pool's deployment (pool.go; nil for an alias: client, ctrl and
	// tokens are then nil).
	tokens *throttle.TokenGate
	pool   *pool
	mu     sync.Mutex
	runs   []*runConsumer // the runs with jobs for this deployment, fetched in turn
	turn   int
	// added wakes an idle fetch loop when a run joins the rotation.
	added chan struct{}
}

// idle waits up to d for a run to join the rotation.
func (d *deployment) idle(ctx context.Context, wait time.Duration) {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-d.added:
	}
}

func (d *deployment) notify() {
	select {
	case d.added <- struct{}{}:
	default:
	}
}

// New builds a worker: one client and one throttle per deployment.
func New(js jetstream.JetStream, cfg Config, log zerolog.Logger) (*Worker, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	w := &Worker{cfg: cfg, names: cfg.Topology.Names, js: js, log: log.With().Str("component", "worker").Str("worker", cfg.Name).Logger(), deps: map[string]*deployment{}, m: newMetrics(),
		ctl: controls{runs: map[string]string{}, breakers: map[string]bool{}}}
	audit, err := newAuditor(js, cfg.Topology.Names, func(n int) { w.m.auditDropped.Add(float64(n)) })
	if err != nil {
		return nil, err
	}
	w.audit = audit
	w.keep = newKeeper(cfg.Topology.AckWait / 3)
	w.cache = promptCache{now: time.Now, m: newCacheMetrics()}
	for _, d := range cfg.Deployments {
		slots := cfg.Concurrency
		if d.MaxConcurrency > 0 && d.MaxConcurrency < slots {
			slots = d.MaxConcurrency
		}
		o := d.LLM
		o.Concurrency = slots
		client, err := llm.New(o)
		if err != nil {
			return nil, err
		}
		p := d.Throttle
		if cfg.Naive {
			p.StartRate, p.MinRate, p.MaxRate = 1e6, 1e6, 1e6
		}
		ctrl, err := throttle.New(p)
		if err != nil {
			return nil, fmt.Errorf("deployments.%s.throttle: %w", o.Alias, err)
		}
		dep := &deployment{alias: o.Alias, client: client, ctrl: ctrl, slots: slots, prices: d.Prices, added: make(chan struct{}, 1)}
		if !cfg.Naive {
			dep.tokens = throttle.NewTokenGate(p.TokensPerMinute, nil)
		}
		w.deps[o.Alias] = dep
		w.m.initDeployment(dep)
		w.cache.m.init(o.Alias)
		w.m.reasks.WithLabelValues(o.Alias) // exported at 0 before the first re-ask
	}
	return w, nil
}

// Run serves until ctx ends, then drains: stops fetching, lets in-flight calls finish
// up to DrainTimeout, NAKs what is left, and returns after every goroutine exited.
func (w *Worker) Run(ctx context.Context) error {
	// One loop keeps every in-flight job alive; it stops after the last handler.
	keepCtx, stopKeep := context.WithCancel(context.WithoutCancel(ctx))
	keeping := make(chan struct{})
	go func() { defer close(keeping); w.keep.run(keepCtx) }()
	defer func() { stopKeep(); <-keeping }()
	memory, err := w.openBus(ctx)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	w.startControls(ctx, &wg)
	w.startFleets(ctx, &wg, memory)
	// Calls outlive ctx during the drain; they get their own context.
	callCtx, cancelCalls := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelCalls()

	// The audit's batches go out until the last call is recorded, then once more.
	stopAudit, audited := make(chan struct{}), make(chan struct{})
	go func() { defer close(audited); w.audit.run(stopAudit, 2*time.Second) }()
	defer func() { close(stopAudit); <-audited }()

	var inflight sync.WaitGroup
	w.startFetching(ctx, callCtx, &wg, &inflight)
	w.started.Store(true)
	<-ctx.Done()
	w.started.Store(false)
	wg.Wait() // fetching stopped
	w.drain(&inflight, cancelCalls)
	return nil
}

// openBus ensures the topology and opens the buckets and streams the worker reads and
// writes; it returns the throttle's memory bucket (the fleets remember rates in it).
func (w *Worker) openBus(ctx context.Context) (jetstream.KeyValue, error) {
	if err := queue.EnsureAwait(ctx, w.js, w.cfg.Topology, w.log); err != nil {
		return nil, err
	}
	kv, err := w.js.KeyValue(ctx, w.names.BucketRetry())
	if err != nil {
		return nil, fmt.Errorf("open kv %s: %w", w.names.BucketRetry(), err)
	}
	w.retry = kv
	if w.runs, err = w.js.KeyValue(ctx, w.names.BucketRuns()); err != nil {
		return nil, fmt.Errorf("open kv %s: %w", w.names.BucketRuns(), err)
	}
	if w.results, err = w.js.Stream(ctx, w.names.StreamResults()); err != nil {
		return nil, fmt.Errorf("open stream %s: %w", w.names.StreamResults(), err)
	}
	if w.input, err = w.js.Stream(ctx, w.names.StreamInput()); err != nil {
		return nil, fmt.Errorf("open stream %s: %w", w.names.StreamInput(), err)
	}
	if w.jobs, err = w.js.Stream(ctx, w.names.StreamJobs()); err != nil {
		return nil, fmt.Errorf("open stream %s: %w", w.names.StreamJobs(), err)
	}
	memory, err := w.js.KeyValue(ctx, w.names.BucketThrottle())
	if err != nil {
		return nil, fmt.Errorf("open kv %s: %w", w.names.BucketThrottle(), err)
	}
	if err := w.cache.open(ctx, w.js, w.names.BucketCache()); err != nil {
		return nil, fmt.Errorf("open kv %s: %w", w.names.BucketCache(), err)
	}
	return memory, nil
}

// startControls starts watching the runs' control records and waits (up to 10 s) for
// them to be loaded: a paused run's jobs must not be called.
func (w *Worker) startControls(ctx context.Context, wg *sync.WaitGroup) {
	loaded := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.watchControls(ctx, w.runs, loaded)
	}()
	select { // run controls first: a paused run's jobs must not be called
	case <-loaded:
	case <-time.After(10 * time.Second):
		w.log.Warn().Msg("run controls not loaded after 10 s; starting anyway")
	}
}

// startFleets starts each deployment's fleet throttle (not in naive mode), remembering
// rates in memory and exporting its state as metrics on every tick.
func (w *Worker) startFleets(ctx context.Context, wg *sync.WaitGroup, memory jetstream.KeyValue) {
	for _, d := range w.deps {
		if w.cfg.Naive {
			continue
		}
		d.fleet = throttle.NewFleet(w.js.Conn(), w.names, d.alias, w.cfg.Name+"-"+randomID(), d.ctrl, w.log.With().Str("deployment", d.alias).Logger())
		d.fleet.Remember(memory)
		metrics := w.fleetMetrics(d.alias, d.fleet)
		d.fleet.OnTick(func(s throttle.Snapshot, members int) {
			metrics(s, members)
			d.tokens.SetMembers(members) // the token budget's parts (tokens.go)
			w.m.tokenLimit.WithLabelValues(d.alias).Set(d.tokens.Limit())
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = d.fleet.Run(ctx)
		}()
	}
}

// fleetMetrics returns the tick callback that exports a deployment's fleet throttle
// state: rate, share, members, pause, ceiling, source and the remembered rate.
func (w *Worker) fleetMetrics(alias string, fleet *throttle.Fleet) func(throttle.Snapshot, int) {
	return func(s throttle.Snapshot, members int) {
		w.m.rate.WithLabelValues(alias).Set(s.Rate * s.Share)
		w.m.fleetRate.WithLabelValues(alias).Set(s.Rate)
		w.m.share.WithLabelValues(alias).Set(s.Share)
		w.m.members.WithLabelValues(alias).Set(float64(members))
		w.m.paused.WithLabelValues(alias).Set(s.PausedFor.Seconds())
		w.m.ceiling.WithLabelValues(alias).Set(s.Ceiling)
		for _, src := range []string{throttle.SourceHeaders, throttle.SourceLearned, throttle.SourceProbing} {
			w.m.source.WithLabelValues(alias, src).Set(b2f(s.Source == src))
		}
		if l, ok := fleet.Learned(); ok {
			w.m.learned.WithLabelValues(alias).Set(l.Rate)
			w.m.learnedAge.WithLabelValues(alias).Set(time.Since(l.Learned).Seconds())
		}
	}
}

// startFetching starts one fetch loop per deployment (calls run on callCtx, counted in
// inflight) and the watchers: MaxDeliver advisories, new runs, dormant runs.
func (w *Worker) startFetching(ctx, callCtx context.Context, wg, inflight *sync.WaitGroup) {
	w.launch = func(p *deployment) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.fetchLoop(ctx, callCtx, p, inflight)
		}()
	}
	for _, d := range w.deps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.fetchLoop(ctx, callCtx, d, inflight)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.watchMaxDeliveries(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.watchRuns(ctx, callCtx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.watchDormant(ctx)
	}()
}

// drain waits for the in-flight calls up to DrainTimeout, then cancels those left
// (their jobs are NAKed) and waits for them to end.
func (w *Worker) drain(inflight *sync.WaitGroup, cancelCalls context.CancelFunc) {
	done := make(chan struct{})
	go func() { inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(w.cfg.DrainTimeout):
		w.log.Warn().Stringer("drain_timeout", w.cfg.DrainTimeout).Msg("drain timeout: cancelling in-flight calls, their jobs are NAKed")
		cancelCalls()
		<-done
	}
	w.log.Info().Msg("drained")
}

// fetchLoop pulls jobs for one deployment (an alias, or a pool: fetchPool): a slot and
// a pacing permit first, then a fetch of at most that many messages. The slots it
// fetches for are the deployment's call slots and a reserve (reserveOf): a job fetched
// into the reserve waits in the worker for a call slot, so that when a call ends the
// next one starts without a fetch's round trip. No other message waits in the worker.
func (w *Worker) fetchLoop(ctx, callCtx context.Context, d *deployment, inflight *sync.WaitGroup) {
	slots := make(chan struct{}, d.slots+reserveOf(d.slots))
	release := func() { <-slots }
	ahead := &reserve{slots: slots, calls: d.slots}
	pulls := newPullers(w.js.Conn(), w.names.StreamJobs(), d.alias, cap(slots))
	defer pulls.close()
	handlers := w.handlers(callCtx, ctx.Done(), d, inflight, cap(slots), release)
	defer close(handlers) // the handlers finish their jobs (Run waits for them), then exit
	for ctx.Err() == nil {
		// Paused (Retry-After, or a deployment-wide error): take no slot, fetch nothing.
		// (A pool has no pause of its own: its members' are skipped when a permit is
		// taken.)
		if d.pool == nil {
			if p := d.ctrl.PausedFor(); p > 0 {
				sleep(ctx, p)
				continue
			}
		}
		// Only live runs are fetched: a paused run takes no permit and no delivery
		// (which would count toward its crash-loop cap), a dormant one no round trip.
		runs := d.rotation(func(run string) bool { return w.ctl.run(run) == wire.ControlPaused })
		pulls.keep(runs)
		if len(runs) == 0 { // nothing to fetch from: take no permit
			d.idle(ctx, 50*time.Millisecond)
			continue
		}
		// Jobs ahead of a free call slot only while the queue is long (reserve.go).
		queued := d.queueState(pulls, runs)
		if queued.opens() {
			ahead.open()
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		most := ahead.limit(queued)
		if most < 1 {
			if ahead.keep() {
				continue
			}
			most = 1 // a call slot is free (the reserve is all shut)
		}
		cached, paced := d.splitCached(runs)
		if len(cached) > 0 && (len(paced) == 0 || cached[0] == runs[0]) {
			// Its turn goes to the runs whose jobs use the prompt cache: fetched
			// without a permit, as many as slots are free; a job the cache does not
			// answer takes its permit before its call (cache.go).
			n := 1
			for n < most && tryTake(slots) {
				n++
			}
			// Nothing there: wait for jobs only when no other run could take the turn.
			got := w.fetch(ctx, d, pulls, cached, n, len(paced) == 0, func(msg jetstream.Msg) { handlers <- fetched{msg: msg} })
			for i := got; i < n; i++ {
				release()
			}
			continue
		}
		runs = paced
		if d.pool != nil { // a pool: each job holds the permit of a member (pool.go)
			if !w.fetchPool(ctx, d, pulls, runs, slots, most, handlers) {
				return
			}
			continue
		}
		if err := d.waitPermit(ctx); err != nil {
			release()
			return
		}
		n := 1
		for n < most {
			if ok, _ := d.tryPermit(); !ok {
				break
			}
			select {
			case slots <- struct{}{}:
				n++
				continue
			default:
			}
			d.refundPermit() // no slot: its tokens go back (the grid slot is lost)
			break
		}
		got := w.fetch(ctx, d, pulls, runs, n, true, func(msg jetstream.Msg) { handlers <- fetched{msg: msg, permit: d} })
		for i := got; i < n; i++ {
			d.refundPermit()
			release()
		}
	}
}

// reserveOf is the reserve of a deployment with `slots` call slots: jobs fetched ahead
// of a free call slot, one per 4 slots (at least one). Calls that start together end
// together, so a busy worker's answers come in waves, and a slot whose next job is not
// there waits a fetch's round trip: with one per 16, a 64-slot worker at 50 ms reached
// 86-89 % of slots / latency, with one per 4 89-91 % (docs/BENCHMARKS.md). A reserved
// job waits, kept in progress, until a call of its worker ends: at most a call's length.
// Near a run's end it is shut: jobs ahead only while the other workers' call slots'
// worth stay queued (reserve.go).
func reserveOf(slots int) int { return (slots + 3) / 4 }

// handlers starts the goroutines that handle the jobs sent to the returned channel,
// each one job after the other: a goroutine per job would grow a fresh stack through
// the HTTP client's calls every time. A job is sent with one of the fetch loop's
// `fetching` slots taken (call slots and reserve); its call takes one of d.slots call
// slots (slotHold), and both are released as soon as its last call has answered, so
// the next job's call overlaps this one's result publish and ack instead of waiting for
// them. The channel holds a job per fetching slot, so sending never waits; with a
// goroutine per fetching slot and one per call slot for the results being stored, a
// job waits in the channel only while more than a slot's worth of results are (NATS
// slow), and the slots it holds then stop the fetches. They exit when the channel is
// closed; inflight counts them.
func (w *Worker) handlers(callCtx context.Context, stop <-chan struct{}, d *deployment, inflight *sync.WaitGroup, fetching int, release func()) chan<- fetched {
	jobs := make(chan fetched, fetching)
	calls := make(chan struct{}, d.slots)
	inflight.Add(fetching + d.slots)
	for range fetching + d.slots {
		go func() {
			defer inflight.Done()
			slot := &slotHold{calls: calls, stop: stop, release: release}
			for f := range jobs {
				slot.fetched = true
				w.handle(callCtx, d, f.msg, f.permit, slot)
				slot.free()
			}
		}()
	}
	return jobs
}

// slotHold is what a handler's job holds: its fetching slot, from the fetch until free,
// and a call slot, from takeCall until free. One handler goroutine uses it.
type slotHold struct {
	calls   chan struct{}   // the call slots
	stop    <-chan struct{} // closed when the worker stops fetching (drain)
	release func()          // gives the fetching slot back
	fetched bool            // the fetching slot is held
	calling bool            // a call slot is held
}

// takeCall takes a call slot unless one is held, waiting for one if none is free
// (waited). It fails (ok false) when the worker drains or ctx ends first: a job not yet
// called then goes back to the queue at once.
func (s *slotHold) takeCall(ctx context.Context) (waited, ok bool) {
	if s.calling {
		return false, true
	}
	select {
	case s.calls <- struct{}{}:
		s.calling = true
		return false, true
	default:
	}
	select {
	case s.calls <- struct{}{}:
		s.calling = true
		return true, true
	case <-s.stop:
	case <-ctx.Done():
	}
	return true, false
}

// free releases what the job holds: no call is left to make.
func (s *slotHold) free() {
	if s.calling {
		s.calling = false
		<-s.calls
	}
	if s.fetched {
		s.fetched = false
		s.release()
	}
}

// fetched is a delivery on its way to a handler: permit is the deployment whose
// throttle permit was taken for it (the deployment, or a pool's member), nil when none
// was (the runs whose jobs use the prompt cache).
type fetched struct {
	msg    jetstream.Msg
	permit *deployment
}

// tryTake takes a free slot if there is one.
func tryTake(slots chan struct{}) bool {
	select {
	case slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// runConsumer is one run's job consumer for a deployment. Fields below cons are
// guarded by the deployment's mutex.
type runConsumer struct {
	run  string
	cons jetstream.Consumer
	// busy is the last time the consumer delivered or had something pending. Past
	// IdleRunAfter the run goes dormant: not fetched, so its consumer can expire, and
	// checked for new jobs at next, every `every`.
	busy    time.Time
	dormant bool
	next    time.Time
	every   time.Duration
	// cache: the run's jobs use the prompt cache (the last one handled did), so the
	// run is fetched without permits.
	cache bool
}

// maxDormantCheck bounds the interval between checks of a dormant run.
const maxDormantCheck = 5 * time.Minute

func (d *deployment) addRun(run string, c jetstream.Consumer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, rc := range d.runs {
		if rc.run == run {
			return
		}
	}
	d.runs = append(d.runs, &runConsumer{run: run, cons: c, busy: time.Now()})
	d.notify()
}

func (d *deployment) removeRun(run string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, rc := range d.runs {
		if rc.run == run {
			d.runs = append(d.runs[:i], d.runs[i+1:]...)
			return
		}
	}
}

// rotation returns the runs to fetch from (not dormant, not skipped), starting with the
// next one's turn.
func (d *deployment) rotation(skip func(run string) bool) []*runConsumer {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := len(d.runs)
	out := make([]*runConsumer, 0, k)
	for i := range k {
		rc := d.runs[(d.turn+i)%k]
		if !rc.dormant && !skip(rc.run) {
			out = append(out, rc)
		}
	}
	d.turn++
	return out
}

// consumer returns a run's current consumer (watchDormant may replace it).
func (d *deployment) consumer(rc *runConsumer) jetstream.Consumer {
	d.mu.Lock()
	defer d.mu.Unlock()
	return rc.cons
}

// touch records that a run had work.
func (d *deployment) touch(rc *runConsumer) {
	d.mu.Lock()
	rc.busy = time.Now()
	d.mu.Unlock()
}

// sleepRun stops fetching a run; watchDormant checks it for new jobs from now on.
func (d *deployment) sleepRun(rc *runConsumer, every time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rc.dormant, rc.every, rc.next = true, every, time.Now().Add(every)
}

// wake puts a dormant run back in the rotation with a fresh consumer.
func (d *deployment) wake(rc *runConsumer, c jetstream.Consumer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rc.cons, rc.dormant, rc.busy = c, false, time.Now()
	d.notify()
}

// dueDormant returns the dormant runs whose check is due.
func (d *deployment) dueDormant(now time.Time) []*runConsumer {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*runConsumer
	for _, rc := range d.runs {
		if rc.dormant && !now.Before(rc.next) {
			out = append(out, rc)
		}
	}
	return out
}

// lost handles a run whose consumer failed a fetch: gone with its run (the collector
// deletes it when the run finishes) or expired while the run was paused or idle.
func (w *Worker) lost(ctx context.Context, d *deployment, rc *runConsumer) {
	_, err := w.js.Consumer(ctx, w.names.StreamJobs(), queue.JobConsumerName(d.alias, rc.run))
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return // a passing error: fetch again
	}
	if w.finished(ctx, rc.run) {
		d.removeRun(rc.run)
		return
	}
	d.sleepRun(rc, w.cfg.DormantCheck) // its jobs, if any, bring the consumer back
}

// finished reports whether a run is over: the collector purges its records when it
// finishes it.
func (w *Worker) finished(ctx context.Context, run string) bool {
	_, err := w.input.GetLastMsgForSubject(ctx, w.names.InputOpenSubject(run))
	return errors.Is(err, jetstream.ErrMsgNotFound)
}

// settle puts the fetched runs that had nothing to deliver for IdleRunAfter to sleep:
// workers stop polling them, so their consumers expire (InactiveThreshold).
func (w *Worker) settle(ctx context.Context, d *deployment, runs []*runConsumer) {
	now := time.Now()
	for _, rc := range runs {
		d.mu.Lock()
		idle := now.Sub(rc.busy) >= w.cfg.IdleRunAfter && !rc.dormant
		d.mu.Unlock()
		if !idle {
			continue
		}
		info, err := d.consumer(rc).Info(ctx)
		if err != nil || info.NumPending > 0 || info.NumAckPending > 0 {
			d.touch(rc) // redeliveries pending (NAK delays) or a passing error
			continue
		}
		w.log.Debug().Str("deployment", d.alias).Str("run", rc.run).Msg("run idle: not polled until it has new jobs")
		d.sleepRun(rc, w.cfg.DormantCheck)
	}
}

// watchDormant checks dormant runs: a finished run is dropped (and its consumer deleted
// if it is still there), a run with jobs in MQ_JOBS gets its consumer back (created
// again if it expired) and is fetched again; else the next check is later, up to
// maxDormantCheck apart.
func (w *Worker) watchDormant(ctx context.Context) {
	t := time.NewTicker(min(w.cfg.DormantCheck, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, d := range w.fetched() {
				for _, rc := range d.dueDormant(now) {
					w.checkDormant(ctx, d, rc)
				}
			}
		}
	}
}

func (w *Worker) checkDormant(ctx context.Context, d *deployment, rc *runConsumer) {
	if w.finished(ctx, rc.run) {
		d.removeRun(rc.run)
		if err := w.js.DeleteConsumer(ctx, w.names.StreamJobs(), queue.JobConsumerName(d.alias, rc.run)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			w.log.Debug().Err(err).Str("run", rc.run).Msg("delete job consumer of a finished run")
		}
		return
	}
	_, err := w.jobs.GetLastMsgForSubject(ctx, w.names.JobDeploymentRunFilter(d.alias, rc.run))
	if err != nil {
		d.mu.Lock()
		every := min(rc.every*2, max(maxDormantCheck, w.cfg.DormantCheck))
		d.mu.Unlock()
		d.sleepRun(rc, every)
		return
	}
	c, err := queue.EnsureJobConsumer(ctx, w.js, w.cfg.Topology, d.alias, rc.run)
	if err != nil {
		w.log.Warn().Err(err).Str("run", rc.run).Msg("job consumer of a dormant run")
		return
	}
	w.log.Debug().Str("deployment", d.alias).Str("run", rc.run).Msg("dormant run has jobs again")
	d.wake(rc, c)
}

// fetch gets up to n messages without waiting, sharing them between the given runs
// (an equal part from each in turn, then whatever is left); when there is nothing and
// idle is set, it waits a little so an idle worker does not spin.
func (w *Worker) fetch(ctx context.Context, d *deployment, pulls *pullers, runs []*runConsumer, n int, idle bool, start func(jetstream.Msg)) int {
	got := 0
	defer w.settle(ctx, d, runs)
	for pass := range 2 {
		for _, rc := range runs {
			want := n - got
			if pass == 0 {
				want = min(want, max(1, n/len(runs)))
			}
			if want <= 0 {
				return got
			}
			k, err := pulls.of(rc).fetch(ctx, want, start)
			got += k
			if k > 0 {
				d.touch(rc)
			}
			if err != nil && ctx.Err() == nil {
				w.lost(ctx, d, rc)
			}
		}
	}
	if got == 0 && idle {
		// Nothing now: wait for jobs of the first run up to idleWait, holding the
		// slots and permits taken (as a sleep would), so that a job published
		// meanwhile starts at once, and an idle worker does not spin.
		k, err := pulls.of(runs[0]).pull(ctx, n, idleWait, start)
		got += k
		if k > 0 {
			d.touch(runs[0])
		}
		if err != nil && ctx.Err() == nil {
			w.lost(ctx, d, runs[0])
			sleep(ctx, idleWait)
		}
	}
	return got
}

// idleWait is how long a fetch that found nothing waits for new jobs.
const idleWait = 50 * time.Millisecond

// capacity feeds a capacity answer to the throttle (and, through it, to the fleet). A
// lone one changes nothing there: only its own job waits (its NAK delay honours its
// Retry-After); corroborated pressure cuts the fleet rate and may pause the fleet.
// budget feeds a served answer's rate-limit headers to the throttle: a stated limit
// caps the fleet rate, a budget read as spent is pressure before the first 429.
func (d *deployment) budget(rl llm.RateLimit) {
	if d.fleet != nil && rl.Known() {
		d.fleet.Budget(throttle.Budget{Ceiling: rl.RequestsPerSecond(), Spent: rl.Spent()})
	}
}

// served counts an answer that was not a capacity error (the fleet's served rate).
func (d *deployment) served() {
	if d.fleet != nil {
		d.fleet.Served()
	}
}

func (d *deployment) capacity(e *llm.CapacityError) {
	if d.fleet != nil {
		d.fleet.Capacity(e.StatusCode, throttle.Signal{RetryAfter: e.RetryAfter, BudgetSpent: e.BudgetSpent})
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func randomID() string {
	return strconv.FormatUint(rand.Uint64()%1e9, 36)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
