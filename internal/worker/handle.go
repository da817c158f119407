package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

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

// handle runs one delivery of one job to a single queue action.
func (w *Worker) handle(ctx context.Context, d *deployment, msg jetstream.Msg) {
	log := w.log.With().Str("deployment", d.alias).Str("subject", msg.Subject()).Logger()
	defer func() {
		if r := recover(); r != nil {
			// A panic is this job's error, never the worker's end: retry it later.
			log.Error().Interface("panic", r).Msg("handler panic; job NAKed")
			_ = msg.NakWithDelay(5 * time.Second)
		}
	}()
	_, addr, subjErr := wire.ParseJobSubject(msg.Subject())
	var job wire.Job
	if err := wire.Decode(msg.Data(), &job); err != nil {
		if errors.Is(err, wire.ErrNewerVersion) {
			// A newer worker will take it: never Term during a rolling upgrade.
			log.Warn().Err(err).Msg("job of a newer schema version; NAK for a newer worker")
			_ = msg.NakWithDelay(30 * time.Second)
			return
		}
		w.poison(ctx, d.alias, msg, addr, subjErr, err, log)
		return
	}
	if err := job.Validate(); err != nil {
		w.poison(ctx, d.alias, msg, addr, subjErr, err, log)
		return
	}
	if subjErr != nil || job.Addr() != addr || job.Deployment != d.alias {
		w.poison(ctx, d.alias, msg, addr, subjErr, fmt.Errorf("payload %s on %s does not match its subject", job.Addr(), msg.Subject()), log)
		return
	}
	log = log.With().Str("run", job.Run).Int("row", job.Row).Str("query", job.Query).Logger()
	meta, err := msg.Metadata()
	if err != nil {
		log.Error().Err(err).Msg("message metadata")
		_ = msg.Nak()
		return
	}
	attempt := int(meta.NumDelivered)
	switch w.ctl.run(job.Run) {
	case StateCancelled:
		st := w.stateOf(ctx, &job, attempt)
		w.final(ctx, msg, &job, nil, &wire.Error{Reason: wire.ReasonCancelled, Message: "the run was cancelled"}, attempt, st.spent(), spend{}, log)
		return
	case StatePaused:
		// Fetched just before the pause was known (paused runs are not fetched): wait.
		w.wait(ctx, msg, &job, jitter(w.cfg.PausedRunDelay), d.alias, log)
		return
	}
	// Crash-loop backstop: only deliveries that ended without an outcome count.
	if meta.NumDelivered > w.cfg.HardDeliverCap {
		if st := w.loadState(ctx, &job); meta.NumDelivered-st.naks() > w.cfg.HardDeliverCap {
			w.final(ctx, msg, &job, nil, &wire.Error{Reason: wire.ReasonMaxDeliveries, Message: fmt.Sprintf("delivered %d times", meta.NumDelivered),
				Details: map[string]any{"deliveries": meta.NumDelivered}}, attempt, st.spent(), spend{}, log)
			return
		}
	}
	// The deployment may have been paused (fleet-wide Retry-After) since the permit was
	// taken: do not dispatch into the pause.
	if p := d.ctrl.PausedFor(); p > 0 {
		w.wait(ctx, msg, &job, p+time.Duration(float64(p)*0.2*rand.Float64()), d.alias, log)
		return
	}
	// A redelivery whose result is already stored (the ack was lost) is done: no call.
	if meta.NumDelivered > 1 && w.resultStored(ctx, &job) {
		w.done(ctx, msg, &job, attempt, log)
		return
	}
	// Keep the message ours while the call runs (AckWait is short so that a killed
	// worker's jobs come back quickly).
	unhold := w.keep.hold(msg)
	w.m.calls.WithLabelValues(d.alias).Inc()
	began := time.Now()
	ans, callErr := d.client.Call(ctx, job.Request)
	unhold()
	if ans != nil {
		d.budget(ans.RateLimit)
	}
	this := callSpend(ans)
	var fields map[string]json.RawMessage
	if callErr == nil {
		fields, callErr = llm.ParseAnswer(ans.Content, job.Outputs)
	}
	if ctx.Err() != nil {
		// Drain timeout hit: give the job back at once, with what the call cost.
		w.saveSpend(&job, this, log)
		_ = msg.Nak()
		return
	}
	w.audit.record(&job, attempt, w.cfg.Name, ans, callErr, time.Since(began))
	if callErr == nil {
		w.closeBreaker(ctx, d)
		st := w.stateOf(ctx, &job, attempt)
		res := &wire.Result{OK: true, Fields: fields, Usage: &ans.Usage, Model: ans.Model}
		w.final(ctx, msg, &job, res, nil, attempt, st.spent().plus(this), this, log)
		return
	}
	w.onError(ctx, d, msg, &job, callErr, attempt, this, log)
}

// onError maps a classified error to its queue action (the outcome table in docs/OPERATIONS.md). this is
// what the failed call cost; a NAK stores it in the retry state, a final result sums it.
func (w *Worker) onError(ctx context.Context, d *deployment, msg jetstream.Msg, job *wire.Job, callErr error, attempt int, this spend, log zerolog.Logger) {
	var (
		capErr  *llm.CapacityError
		tranErr *llm.TransientError
		depErr  *llm.DeploymentError
		permErr *llm.PermanentError
	)
	switch {
	case errors.As(callErr, &capErr):
		w.m.capacity.WithLabelValues(d.alias).Inc()
		d.capacity(capErr)
		st, elapsed, err := w.recordCapacity(ctx, job, capErr, this)
		if err != nil {
			log.Warn().Err(err).Msg("retry state")
			w.nak(msg, time.Second, d.alias)
			return
		}
		budget := time.Duration(job.MaxCapacityRetrySeconds) * time.Second
		if elapsed >= budget {
			w.final(ctx, msg, job, nil, &wire.Error{Reason: wire.ReasonCapacityTimeout, Message: capErr.Message, Details: map[string]any{
				"status_code": capErr.StatusCode, "elapsed": elapsed.Seconds(), "max": budget.Seconds(), "capacity_errors": st.CapacityErrors,
			}}, attempt, st.spent(), spend{}, log)
			return
		}
		if w.cfg.Naive {
			w.nak(msg, min(NaiveNakDelay, budget-elapsed+50*time.Millisecond), d.alias)
			return
		}
		// Never before Retry-After: jitter only lengthens the delay.
		delay := max(capErr.RetryAfter, 100*time.Millisecond, d.ctrl.PausedFor())
		delay = time.Duration(float64(delay) * (1 + 0.2*rand.Float64()))
		delay = min(delay, w.cfg.MaxNakDelay, budget-elapsed+50*time.Millisecond)
		w.nak(msg, delay, d.alias)
	case errors.As(callErr, &tranErr):
		st, err := w.recordTransient(ctx, job, callErr, this)
		if err != nil {
			log.Warn().Err(err).Msg("retry state")
			w.nak(msg, time.Second, d.alias)
			return
		}
		if st.TransientErrors >= job.MaxAttempts {
			w.final(ctx, msg, job, nil, &wire.Error{Reason: wire.ReasonRetryExhausted, Message: tranErr.Message, Details: map[string]any{
				"status_code": tranErr.StatusCode, "attempts": st.TransientErrors,
			}}, attempt, st.spent(), spend{}, log)
			return
		}
		backoff := w.cfg.TransientBackoff << min(st.TransientErrors-1, 5)
		w.nak(msg, jitter(min(backoff, 30*time.Second)), d.alias)
	case errors.As(callErr, &depErr):
		// Not a row's fault: pause the deployment and let the job wait.
		log.Error().Int("status", depErr.StatusCode).Str("code", depErr.Code).Msg("deployment-wide error: pausing the deployment fleet-wide; jobs wait")
		w.openBreaker(ctx, d, depErr)
		w.recordNak(ctx, job, this, log)
		w.nak(msg, w.cfg.DeploymentPause, d.alias)
	case errors.As(callErr, &permErr):
		details := map[string]any{}
		if permErr.Field != "" {
			details["field"] = permErr.Field
		}
		if permErr.StatusCode != 0 {
			details["status_code"] = permErr.StatusCode
		}
		st := w.stateOf(ctx, job, attempt)
		w.final(ctx, msg, job, nil, &wire.Error{Reason: permErr.Reason, Message: permErr.Message, Details: details}, attempt, st.spent().plus(this), this, log)
	default:
		log.Warn().Err(callErr).Msg("unclassified error; retrying")
		w.recordNak(ctx, job, this, log)
		w.nak(msg, 5*time.Second, d.alias)
	}
}

// wait gives a job back without a call (its run or deployment is paused), recording the
// NAK so that waiting never counts toward the crash-loop cap.
func (w *Worker) wait(ctx context.Context, msg jetstream.Msg, job *wire.Job, delay time.Duration, alias string, log zerolog.Logger) {
	w.recordNak(ctx, job, spend{}, log)
	w.nak(msg, delay, alias)
}

func (w *Worker) nak(msg jetstream.Msg, delay time.Duration, alias string) {
	w.m.naks.WithLabelValues(alias).Inc()
	_ = msg.NakWithDelay(delay)
}

// jitter multiplies d by U(0.8, 1.2).
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
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
	err := w.publishResult(ctx, res)
	if err == nil {
		return nil
	}
	_ = msg.InProgress()
	defer w.keep.hold(msg)()
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		w.m.resultRetries.WithLabelValues(alias).Inc()
		log.Warn().Err(err).Dur("retry_in", wait).Msg("result not stored: job kept, publish retried")
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
	_, err := w.results.GetLastMsgForSubject(ctx, wire.ResultSubject(job.Run, job.Row, job.Query))
	return err == nil
}

func (w *Worker) publishResult(ctx context.Context, res *wire.Result) error {
	data, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	subj := wire.ResultSubject(res.Run, res.Row, res.Query)
	// An earlier result winning counts as stored (the job is done); a full stream is
	// waited out, never taken for done.
	return queue.RetryPublish(ctx, w.log, subj, func(ctx context.Context) error {
		_, err := w.js.Publish(ctx, subj, data, jetstream.WithMsgID(wire.ResultMsgID(res.Run, res.Row, res.Query)))
		return err
	})
}

// poison handles an undecodable or invalid job: dead-letter the original payload with the
// reason, publish a synthetic error result so the row completes, then Term.
func (w *Worker) poison(ctx context.Context, alias string, msg jetstream.Msg, addr wire.Addr, subjErr, cause error, log zerolog.Logger) {
	log.Error().Err(cause).Msg("poison job: dead-lettered and terminated")
	w.m.poison.WithLabelValues(alias).Inc()
	dead := nats.NewMsg(wire.DeadSubject(alias, orUnknown(addr.Run)))
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
			Error: &wire.Error{Reason: wire.ReasonPoison, Message: cause.Error()}}
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
