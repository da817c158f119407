package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	json "github.com/goccy/go-json"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/llm"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// retryState survives redeliveries: NAK carries no state. It is written only when a
// delivery ends in a NAK (a retry or a wait), never on the way to a first-time success.
type retryState struct {
	FirstCapacity   time.Time `json:"first_capacity,omitzero"` // server time of the first capacity error
	CapacityErrors  int       `json:"capacity_errors"`
	TransientErrors int       `json:"transient_errors"`
	LastError       string    `json:"last_error,omitempty"`
	// What the NAKed deliveries spent: the provider bills every HTTP call.
	Calls            int   `json:"calls,omitempty"`
	PromptTokens     int64 `json:"prompt_tokens,omitempty"`
	CompletionTokens int64 `json:"completion_tokens,omitempty"`
	// Naks counts deliveries that ended in a NAK this worker chose (retry, wait, pause):
	// only the other deliveries (a worker died or hung mid-job) count toward HardDeliverCap.
	Naks int `json:"naks,omitempty"`
	// AnswerErrors counts the answers that were not usable (the query is asked again
	// while they do not exceed max_answer_retries); LastAnswerError says why the last one
	// was not, for a re-ask with reask_with_error.
	AnswerErrors    int    `json:"answer_errors,omitempty"`
	LastAnswerError string `json:"last_answer_error,omitempty"`
}

// spend is what the provider billed: HTTP calls and their tokens.
type spend struct {
	calls              int
	prompt, completion int64
}

func (s spend) plus(o spend) spend {
	return spend{calls: s.calls + o.calls, prompt: s.prompt + o.prompt, completion: s.completion + o.completion}
}

// callSpend is one HTTP call: its tokens when an answer came back (a 200 whose answer
// failed is billed too), none for an error status.
func callSpend(ans *llm.Answer) spend {
	s := spend{calls: 1}
	if ans != nil {
		s.prompt, s.completion = ans.Usage.PromptTokens, ans.Usage.CompletionTokens
	}
	return s
}

// apply writes the spend into a final result: calls, retries (calls beyond the first)
// and billed tokens.
func (s spend) apply(res *wire.Result) {
	res.Calls, res.Retries = s.calls, max(s.calls-1, 0)
	if s.calls > 0 {
		res.Billed = &wire.Usage{PromptTokens: s.prompt, CompletionTokens: s.completion, TotalTokens: s.prompt + s.completion}
	}
}

func (st *retryState) spent() spend {
	return spend{calls: st.Calls, prompt: st.PromptTokens, completion: st.CompletionTokens}
}

func (st *retryState) add(s spend) {
	st.Calls += s.calls
	st.PromptTokens += s.prompt
	st.CompletionTokens += s.completion
}

// naks is the number of deliveries that ended cleanly in a NAK (states written before
// Naks existed counted only errors).
func (st *retryState) naks() uint64 {
	return uint64(max(st.Naks, st.CapacityErrors+st.TransientErrors))
}

// handle runs one delivery of one job to a single queue action. decide (outcome.go)
// says which, from what is known wherever the delivery may end; handle gathers those
// facts and carries the action out. d is the deployment the job was fetched for (an
// alias, or a pool: pool.go); permit is the deployment whose throttle permit the
// delivery holds: d, a member of d's pool, or nil when it was fetched without one (its
// run's jobs use the prompt cache, cache.go). slot is what the delivery holds in the
// worker: the call takes a call slot, and frees both once its last call has answered.
func (w *Worker) handle(ctx context.Context, d *deployment, msg jetstream.Msg, permit *deployment, slot *slotHold) {
	// The job's logger is built once, when the job is known (a With allocates).
	base := func() zerolog.Context { return w.log.With().Str("deployment", d.alias).Str("subject", msg.Subject()) }
	var log zerolog.Logger
	logged := false
	defer func() {
		if r := recover(); r != nil {
			if !logged {
				log = base().Logger()
			}
			// A panic is this job's error, never the worker's end: retry it later.
			log.Error().Interface("panic", r).Msg("handler panic; job NAKed")
			_ = msg.NakWithDelay(5 * time.Second)
		}
	}()
	in := outcomeInput{policy: w.cfg.policy(), rand: rand.Float64()}
	var job wire.Job
	_, addr, subjErr := w.names.ParseJobSubject(msg.Subject())
	if check, cause := checkJob(msg, &job, addr, subjErr, d.alias); check != jobValid {
		log, logged = base().Logger(), true
		permit.refundPermit() // no call: the permit's tokens go back (tokens.go)
		in.job, in.cause = check, cause.Error()
		switch out := decide(in); out.act {
		case actNewer:
			// A newer worker will take it: never Term during a rolling upgrade.
			log.Warn().Err(cause).Msg("job of a newer schema version; NAK for a newer worker")
			_ = msg.NakWithDelay(out.delay)
		case actPoison:
			w.poison(ctx, d.alias, msg, addr, subjErr, cause, out.err, log)
		}
		return
	}
	log, logged = base().Str("run", job.Run).Int("row", job.Row).Str("query", job.Query).Logger(), true
	meta, err := msg.Metadata()
	if err != nil {
		log.Error().Err(err).Msg("message metadata")
		_ = msg.Nak()
		return
	}
	dl := &delivery{d: d, msg: msg, job: &job, attempt: int(meta.NumDelivered), log: log, slot: slot}
	if d.pool != nil { // a pool's job: the call goes to the member whose permit it holds (pool.go)
		dl.pool = d
		if permit != nil {
			dl.d = permit
		}
	}
	in.run, in.deliveries = w.ctl.run(job.Run), meta.NumDelivered
	in.maxAttempts, in.capacityBudget = job.MaxAttempts, time.Duration(job.MaxCapacityRetrySeconds)*time.Second
	in.maxAnswer = job.MaxAnswerRetries
	var st *retryState
	if in.deliveries > in.hardDeliverCap { // the NAKs matter only past the crash-loop cap
		s := w.loadState(ctx, &job)
		st, in.naks = &s, s.naks()
	}
	if dl.pool == nil { // a pool's paused member is failed over, not waited for
		in.pausedFor = d.ctrl.PausedFor()
	}
	out := decide(in)
	if out.act == actProbe {
		in.probed, in.stored = true, w.resultStored(ctx, &job)
		out = decide(in)
	}
	if out.act != actCall {
		permit.refundPermit() // no call: the permit's tokens go back (tokens.go)
		if st == nil && out.act == actFinal {
			s := w.stateOf(ctx, &job, dl.attempt)
			st = &s
		}
		var spent spend
		if st != nil {
			spent = st.spent()
		}
		w.act(ctx, dl, out, nil, spent, spend{})
		return
	}
	if w.fromCache(ctx, dl) {
		permit.refundPermit() // answered without a call
		return
	}
	if permit == nil && !w.permit(ctx, dl, &in) {
		return
	}
	w.call(ctx, dl, in)
}

// checkJob decodes a delivery's job and checks it against its subject.
func checkJob(msg jetstream.Msg, job *wire.Job, addr wire.Addr, subjErr error, alias string) (jobCheck, error) {
	if err := wire.Decode(msg.Data(), job); err != nil {
		if errors.Is(err, wire.ErrNewerVersion) {
			return jobNewer, err
		}
		return jobPoison, err
	}
	if err := job.Validate(); err != nil {
		return jobPoison, err
	}
	if subjErr != nil || job.Addr() != addr || job.Deployment != alias {
		return jobPoison, fmt.Errorf("payload %s on %s does not match its subject", job.Addr(), msg.Subject())
	}
	return jobValid, nil
}

// delivery is one delivery of a valid job, as its actions need it.
type delivery struct {
	d       *deployment
	msg     jetstream.Msg
	job     *wire.Job
	attempt int
	log     zerolog.Logger
	prior   *retryState // the retry state read before the call (a redelivery that may be a re-ask)
	// slot is what the delivery holds in the worker (a fetching slot, then a call
	// slot), freed once no call is left to make: the result is stored and the job
	// acked outside them.
	slot *slotHold
	// A pool's job (pool.go): pool is the pool, d the member called (the pool itself
	// until a member's permit is taken); tried are the members called in this
	// delivery, carried what their calls cost.
	pool    *deployment
	tried   map[*deployment]bool
	carried spend
}

// call makes the job's model call, then carries out what its outcome comes to.
func (w *Worker) call(ctx context.Context, dl *delivery, in outcomeInput) {
	if dl.pool != nil {
		w.routePool(dl)
	}
	d, job := dl.d, dl.job
	// Keep the message ours while the call runs (AckWait is short so that a killed
	// worker's jobs come back quickly).
	unhold := w.keep.hold(dl.msg)
	if !w.awaitCall(ctx, dl, in, unhold) {
		return
	}
	w.m.calls.WithLabelValues(d.alias).Inc()
	req, reask := w.reask(ctx, dl)
	est := d.chargeTokens(&req)
	began := time.Now()
	ans, callErr := w.callModel(ctx, d, req)
	took := time.Since(began)
	unhold()
	if ans != nil {
		d.budget(ans.RateLimit)
	}
	this := callSpend(ans)
	var fields map[string]json.RawMessage
	if callErr == nil {
		fields, callErr = llm.ParseAnswer(ans.Content, job.Outputs)
	}
	// Drain timeout hit (ctx is over): the job goes back at once, unaudited.
	c := classify(ctx.Err() != nil, callErr)
	d.settleTokens(&req, est, c.class, ans)
	in.call = &c
	if c.class != classCapacity && c.class != classDrained && (ans != nil || c.status != 0) {
		d.served() // the provider answered, and not with a capacity error
	}
	w.m.observeCall(d, c.class, took.Seconds(), this)
	if c.class != classDrained {
		w.audit.record(auditJob(dl), req, dl.attempt, reask, w.cfg.Name, ans, callErr, took)
	}
	if next := w.failover(ctx, dl, c, callErr); next != nil { // pool.go
		dl.carried, dl.d = dl.carried.plus(this), next
		w.call(ctx, dl, in)
		return
	}
	dl.slot.free() // no more calls for this delivery: the next job's may start
	st, unsaved := w.tally(ctx, dl, &in, callErr, this.plus(dl.carried))
	var res *wire.Result
	if c.class == classOK {
		res = &wire.Result{OK: true, Fields: fields, Usage: &ans.Usage, Model: ans.Model}
		if dl.pool != nil {
			res.Deployment = d.alias // the member that answered: <query>_deployment
		}
		w.toCache(ctx, dl, ans)
	}
	w.act(ctx, dl, decide(in), res, st.spent().plus(unsaved), unsaved)
}

// awaitCall takes the delivery's call slot: a job fetched into the reserve waits for
// one here, kept in progress (unhold stops that). It reports false when the delivery
// ended without a call: the worker drains (NAKed, back at once), or the deployment
// paused while the job waited (decide's pause rule, checked again).
func (w *Worker) awaitCall(ctx context.Context, dl *delivery, in outcomeInput, unhold func()) bool {
	waited, ok := dl.slot.takeCall(ctx)
	if ok && waited && dl.pool == nil {
		in.pausedFor = dl.d.ctrl.PausedFor()
	}
	if ok && in.pausedFor == 0 {
		return true
	}
	unhold()
	dl.d.refundPermit()
	if !ok {
		_ = dl.msg.Nak()
		return false
	}
	w.act(ctx, dl, decide(in), nil, spend{}, spend{})
	return false
}

// callModel makes the model call, counted in flight while it runs (a panic included).
func (w *Worker) callModel(ctx context.Context, d *deployment, req wire.Request) (*llm.Answer, error) {
	inflight := w.m.inflight.WithLabelValues(d.alias)
	inflight.Inc()
	defer inflight.Dec()
	return d.client.Call(ctx, req)
}

// tally does what a call's class entails before its outcome can be decided, and fills
// in what decide reads of it: the capacity signal, the error counted in the retry state,
// the breaker opened or closed. this is what the call cost; tally returns the job's
// retry state and the part of this not stored in it (a NAK stores it, a final result
// sums it).
func (w *Worker) tally(ctx context.Context, dl *delivery, in *outcomeInput, callErr error, this spend) (retryState, spend) {
	d, job := dl.d, dl.job
	var (
		st  retryState
		err error
	)
	switch in.call.class {
	case classOK:
		w.closeBreaker(ctx, d)
		return w.priorState(ctx, dl), this
	case classPermanent:
		return w.priorState(ctx, dl), this
	case classAnswer:
		if job.MaxAnswerRetries == 0 { // never asked again: nothing to count
			in.answerErrors = 1
			return w.priorState(ctx, dl), this
		}
		st, err = w.recordAnswer(ctx, job, in.call, this)
		in.answerErrors = st.AnswerErrors
	case classCapacity:
		var capErr *llm.CapacityError
		errors.As(callErr, &capErr)
		w.m.capacity.WithLabelValues(d.alias).Inc()
		d.capacity(capErr)
		st, in.capacityElapsed, err = w.recordCapacity(ctx, job, capErr, this)
		in.capacityErrors = st.CapacityErrors
		in.pausedFor = d.ctrl.PausedFor() // the signal may have paused the deployment
	case classTransient:
		st, err = w.recordTransient(ctx, job, callErr, this)
		in.transientErrors = st.TransientErrors
	case classDeployment:
		var depErr *llm.DeploymentError
		errors.As(callErr, &depErr)
		dl.log.Error().Int("status", depErr.StatusCode).Str("code", depErr.Code).Msg("deployment-wide error: pausing the deployment fleet-wide; jobs wait")
		w.openBreaker(ctx, d, depErr)
		return st, this
	case classUnclassified:
		dl.log.Warn().Err(callErr).Msg("unclassified error; retrying")
		return st, this
	default: // drained
		return st, this
	}
	if err != nil {
		dl.log.Warn().Err(err).Msg("retry state")
		in.stateErr = true
	}
	return st, spend{}
}

// act carries out a decision about a delivery (not actCall, actProbe: handle's, nor
// actNewer, actPoison: the job is not valid). res is the success result; spent is every
// call of the job (this delivery's included), unsaved the part of it not yet in the
// retry state.
func (w *Worker) act(ctx context.Context, dl *delivery, out outcome, res *wire.Result, spent, unsaved spend) {
	switch out.act {
	case actFinal:
		w.final(ctx, dl.msg, dl.job, res, out.err, dl.attempt, spent, unsaved, dl.log)
	case actNak:
		if out.record {
			w.recordNak(ctx, dl.job, unsaved, dl.log)
		}
		if out.reask {
			w.m.reasks.WithLabelValues(dl.d.alias).Inc()
			dl.log.Info().Msg("answer not usable; query asked again")
		}
		w.nak(dl.msg, out.delay, dl.d.alias)
	case actGiveBack:
		w.saveSpend(dl.job, unsaved, dl.log)
		_ = dl.msg.Nak()
	case actDone:
		w.done(ctx, dl.msg, dl.job, dl.attempt, dl.log)
	default:
		panic(fmt.Sprintf("act: action %d is not a delivery's end", out.act))
	}
}

func (w *Worker) nak(msg jetstream.Msg, delay time.Duration, alias string) {
	w.m.naks.WithLabelValues(alias).Inc()
	_ = msg.NakWithDelay(delay)
}

// jitter multiplies d by U(0.8, 1.2).
func jitter(d time.Duration) time.Duration {
	return jitterBy(d, rand.Float64())
}

// final publishes the job's final result, then acks the job. A result already there
// (first result wins) means the job is done. The retry state is deleted last. spent is
// every call made for the job (this delivery's included); unsaved is the part of it not
// yet in the retry state, stored if the job must be given back after all.
func (w *Worker) final(ctx context.Context, msg jetstream.Msg, job *wire.Job, res *wire.Result, failure *wire.Error, attempt int, spent, unsaved spend, log zerolog.Logger) {
	if res == nil {
		res = &wire.Result{OK: false, Error: failure}
	}
	res.V, res.Run, res.Row, res.Query = wire.Version, job.Run, job.Row, job.Query
	res.Attempt, res.Worker = attempt, w.cfg.Name
	res.Data = job.Data // the row's input, when its first query's job carries it
	if !res.OK {
		res.Job = msg.Data() // what mqctl resubmit asks again; a success carries nothing
	}
	spent.apply(res)
	if !job.Enqueued.IsZero() {
		res.Elapsed = time.Since(job.Enqueued).Seconds()
	}
	if err := w.storeResult(ctx, msg, res, job.Deployment, log); err != nil {
		// Only the drain timeout ends the retries: the next delivery calls again, and
		// counts this delivery's calls too.
		log.Warn().Err(err).Msg("publish result; job NAKed at drain")
		w.saveSpend(job, unsaved, log)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	outcome := "ok"
	if !res.OK {
		outcome = res.Error.Reason
		log.Info().Str("reason", res.Error.Reason).Str("detail", res.Error.Message).Msg("query failed")
	}
	w.m.results.WithLabelValues(job.Deployment, outcome).Inc()
	w.done(ctx, msg, job, attempt, log)
}

// done acks a job whose result is stored and forgets its retry state. The ack is not
// confirmed (no round trip while the slot is held): if it is lost, the redelivery finds
// the result stored and acks without a call. A first delivery has no retry state (it
// is written only when a delivery is NAKed): nothing to delete, so no request, and no
// delete marker left behind.
func (w *Worker) done(ctx context.Context, msg jetstream.Msg, job *wire.Job, attempt int, log zerolog.Logger) {
	if err := msg.Ack(); err != nil {
		log.Warn().Err(err).Msg("ack")
	}
	if attempt <= 1 {
		return
	}
	if err := w.retry.Delete(ctx, wire.JobKey(job.Run, job.Row, job.Query)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		log.Debug().Err(err).Msg("delete retry state")
	}
}

// storeResult publishes a final result, retrying with backoff until it is stored or ctx
// ends (the drain timeout). The call is paid: while the publish fails (results stream
// full, unavailable, a network cut) the job stays this worker's (InProgress), so no
// other delivery pays for the call again.
func (w *Worker) storeResult(ctx context.Context, msg jetstream.Msg, res *wire.Result, alias string, log zerolog.Logger) error {
	// Kept from the start: publishResult itself waits out a full stream, a timeout or
	// a reconnect (queue.RetryPublish), which may last longer than AckWait.
	defer w.keep.hold(msg)()
	err := w.publishResult(ctx, res)
	if err == nil {
		return nil
	}
	_ = msg.InProgress()
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		w.m.resultRetries.WithLabelValues(alias).Inc()
		log.Warn().Err(err).Stringer("retry_in", wait).Msg("result not stored: job kept, publish retried")
		sleep(ctx, jitter(wait))
		wait = min(wait*2, 5*time.Second)
		if err = w.publishResult(ctx, res); err == nil {
			return nil
		}
	}
	return err
}

// resultStored reports whether a job's result is already in MQ_RESULTS.
func (w *Worker) resultStored(ctx context.Context, job *wire.Job) bool {
	_, err := w.results.GetLastMsgForSubject(ctx, w.names.ResultSubject(job.Run, job.Row, job.Query))
	return err == nil
}

func (w *Worker) publishResult(ctx context.Context, res *wire.Result) error {
	if res.Data != nil {
		res.V = wire.VersionCarried // a reader of version 1 would drop the row
	}
	data, err := res.AppendJSON(make([]byte, 0, 512+len(res.Data)))
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	limit := w.js.Conn().MaxPayload()
	if res.Job != nil && int64(len(data))+1024 > limit {
		// A failure too large with its job (a prompt near the limit; 1 KiB left for the
		// headers) is stored without it: mqctl resubmit then renders the query again
		// from the pipeline, and the result is not lost.
		trimmed := *res
		trimmed.Job = nil
		if data, err = trimmed.AppendJSON(data[:0]); err != nil {
			return fmt.Errorf("encode result: %w", err)
		}
	}
	if res.OK && int64(len(data))+1024 > limit {
		// An answer too large to store (with the row's data it carries, if any) fails
		// its query, keeping what the call cost and the row's data: the row goes out
		// as an error row naming the sizes, not never. res becomes that failure (the
		// caller counts and logs it as one).
		size := len(data)
		res.OK, res.Fields, res.Usage, res.Model, res.Deployment = false, nil, nil, "", ""
		res.Error = &wire.Error{Reason: wire.ReasonRowTooLarge, Message: fmt.Sprintf(
			"the result of query %s is %d bytes, over the server's max_payload of %d less 1 KiB for headers", res.Query, size, limit),
			Details: map[string]any{"query": res.Query, "size_bytes": size, "limit_bytes": limit}}
		if data, err = res.AppendJSON(data[:0]); err != nil {
			return fmt.Errorf("encode result: %w", err)
		}
	}
	subj := w.names.ResultSubject(res.Run, res.Row, res.Query)
	// An earlier result winning counts as stored (the job is done); a full stream is
	// waited out, never taken for done. No Nats-Msg-Id: MQ_RESULTS keeps one message per
	// subject, so a second result (a duplicate job, a publish retried after a lost ack)
	// gets 10077 while the first is stored; a duplicate window would only cost the
	// server a map entry per result for two minutes.
	return queue.RetryPublish(ctx, w.log, w.names, subj, func(ctx context.Context) error {
		return queue.Publish(ctx, w.js.Conn(), subj, data)
	})
}

// poison handles an undecodable or invalid job: dead-letter the original payload with the
// reason, publish a synthetic error result (failure) so the row completes, then Term.
func (w *Worker) poison(ctx context.Context, alias string, msg jetstream.Msg, addr wire.Addr, subjErr, cause error, failure *wire.Error, log zerolog.Logger) {
	log.Error().Err(cause).Msg("poison job: dead-lettered and terminated")
	w.m.poison.WithLabelValues(alias).Inc()
	dead := nats.NewMsg(w.names.DeadSubject(alias, orUnknown(addr.Run)))
	dead.Data = msg.Data()
	dead.Header.Set(wire.HeaderReason, cause.Error())
	dead.Header.Set(wire.HeaderSubject, msg.Subject())
	if meta, err := msg.Metadata(); err == nil { // a redelivery dead-letters it once
		dead.Header.Set(wire.HeaderMsgID, fmt.Sprintf("dead.%s.%d", alias, meta.Sequence.Stream))
	}
	if _, err := w.js.PublishMsg(ctx, dead); err != nil {
		log.Error().Err(err).Msg("dead-letter publish; job NAKed")
		_ = msg.NakWithDelay(5 * time.Second)
		return
	}
	if subjErr == nil {
		res := &wire.Result{V: wire.Version, Run: addr.Run, Row: addr.Row, Query: addr.Query, Worker: w.cfg.Name,
			Error: failure, Data: wire.RowData(msg.Data())}
		if err := w.publishResult(ctx, res); err != nil {
			log.Error().Err(err).Msg("synthetic result publish; job NAKed")
			_ = msg.NakWithDelay(5 * time.Second)
			return
		}
	}
	_ = msg.TermWithReason(truncate(cause.Error(), 200))
}

func orUnknown(s string) string {
	if wire.ValidToken(s) {
		return s
	}
	return "unknown"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// stateOf is a job's retry state as seen by its attempt-th delivery: a first delivery
// has none (the state is written only when a delivery ends in a NAK), so it is not read.
func (w *Worker) stateOf(ctx context.Context, job *wire.Job, attempt int) retryState {
	if attempt <= 1 {
		return retryState{}
	}
	return w.loadState(ctx, job)
}

func (w *Worker) loadState(ctx context.Context, job *wire.Job) retryState {
	var st retryState
	e, err := w.retry.Get(ctx, wire.JobKey(job.Run, job.Row, job.Query))
	if err == nil {
		_ = json.Unmarshal(e.Value(), &st)
	}
	return st
}

// updateState applies fn to a job's retry state (created if absent), first writer
// wins: a concurrent delivery's write makes it read again. It returns the new state and
// the revision written.
func (w *Worker) updateState(ctx context.Context, job *wire.Job, fn func(*retryState)) (retryState, uint64, error) {
	key := wire.JobKey(job.Run, job.Row, job.Query)
	for range 5 {
		var st retryState
		var rev uint64
		e, err := w.retry.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			fn(&st)
			rev, err = w.retry.Create(ctx, key, mustJSON(st))
		case err != nil:
			return st, 0, fmt.Errorf("get %s: %w", key, err)
		default:
			_ = json.Unmarshal(e.Value(), &st)
			fn(&st)
			rev, err = w.retry.Update(ctx, key, mustJSON(st), e.Revision())
		}
		if queue.IsKeyExists(err) {
			continue // a concurrent delivery wrote first: read again
		}
		if err != nil {
			return st, 0, fmt.Errorf("write %s: %w", key, err)
		}
		return st, rev, nil
	}
	return retryState{}, 0, fmt.Errorf("update %s: too much contention", key)
}

// recordNak stores what a delivery spent before it is NAKed, and counts the NAK.
func (w *Worker) recordNak(ctx context.Context, job *wire.Job, this spend, log zerolog.Logger) {
	if _, _, err := w.updateState(ctx, job, func(st *retryState) { st.add(this); st.Naks++ }); err != nil {
		log.Warn().Err(err).Msg("retry state")
	}
}

// saveSpend stores a delivery's calls when the job is given back at drain (ctx is
// over): best effort, with a deadline of its own.
func (w *Worker) saveSpend(job *wire.Job, this spend, log zerolog.Logger) {
	if this.calls == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	w.recordNak(ctx, job, this, log)
}

// recordCapacity counts a capacity error and returns the time elapsed since the job's
// first one. Both ends are KV server timestamps (the revision written for each capacity
// error), so workers' clocks do not matter and a transient error never starts the budget.
func (w *Worker) recordCapacity(ctx context.Context, job *wire.Job, capErr *llm.CapacityError, this spend) (retryState, time.Duration, error) {
	key := wire.JobKey(job.Run, job.Row, job.Query)
	st, rev, err := w.updateState(ctx, job, func(st *retryState) {
		st.CapacityErrors++
		st.Naks++
		st.LastError = capErr.Error()
		st.add(this)
	})
	if err != nil {
		return st, 0, err
	}
	now, err := w.retry.GetRevision(ctx, key, rev)
	if err != nil {
		return st, 0, fmt.Errorf("get %s: %w", key, err)
	}
	if st.FirstCapacity.IsZero() {
		st.FirstCapacity = now.Created()
		// Best effort: a concurrent writer that lost this race anchors on its own read.
		_, _ = w.retry.Update(ctx, key, mustJSON(st), rev)
	}
	return st, now.Created().Sub(st.FirstCapacity), nil
}

// reask returns the request this delivery sends and its re-ask number: 0 for a first
// ask, n when n answers were not usable before (retryState.AnswerErrors). Only a
// redelivery of a job that may be re-asked reads the retry state (written only on
// failure); with reask_with_error the request gets one more user message saying why the
// last answer was not usable.
func (w *Worker) reask(ctx context.Context, dl *delivery) (wire.Request, int) {
	job := dl.job
	if dl.attempt <= 1 || job.MaxAnswerRetries == 0 {
		return job.Request, 0
	}
	if dl.prior == nil { // read once per delivery (a pool's failover calls again)
		st := w.loadState(ctx, job)
		dl.prior = &st
	}
	st := *dl.prior
	if st.AnswerErrors == 0 {
		return job.Request, 0
	}
	req := job.Request
	if job.ReaskWithError && st.LastAnswerError != "" {
		req.Messages = append(slices.Clip(req.Messages), wire.Message{Role: "user", Content: ReaskMessage(st.LastAnswerError)})
	}
	return req, st.AnswerErrors
}

// ReaskMessage is the user message appended to a query asked again with
// reask_with_error, cause being why the previous answer was not usable.
func ReaskMessage(cause string) string {
	return "Your previous answer could not be used (" + cause + "). Answer again with only the JSON object asked for, every field present and of its type."
}

// priorState is the job's retry state before this delivery's call: read already (reask),
// or read now (stateOf: a first delivery has none).
func (w *Worker) priorState(ctx context.Context, dl *delivery) retryState {
	if dl.prior != nil {
		return *dl.prior
	}
	return w.stateOf(ctx, dl.job, dl.attempt)
}

// recordAnswer counts an answer that was not usable, and why.
func (w *Worker) recordAnswer(ctx context.Context, job *wire.Job, c *callResult, this spend) (retryState, error) {
	st, _, err := w.updateState(ctx, job, func(st *retryState) {
		st.AnswerErrors++
		st.Naks++
		st.LastAnswerError = c.reason + ": " + c.message
		st.add(this)
	})
	return st, err
}

// recordTransient counts a transient error.
func (w *Worker) recordTransient(ctx context.Context, job *wire.Job, callErr error, this spend) (retryState, error) {
	st, _, err := w.updateState(ctx, job, func(st *retryState) {
		st.TransientErrors++
		st.Naks++
		st.LastError = callErr.Error()
		st.add(this)
	})
	return st, err
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
