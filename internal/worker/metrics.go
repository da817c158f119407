package worker

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/multiquery/multiquery/internal/wire"
)

type metrics struct {
	calls                                   *prometheus.CounterVec
	capacity                                *prometheus.CounterVec
	naks                                    *prometheus.CounterVec
	reasks                                  *prometheus.CounterVec
	results                                 *prometheus.CounterVec
	poison                                  *prometheus.CounterVec
	resultRetries                           *prometheus.CounterVec
	latency                                 *prometheus.HistogramVec // deployment, outcome: ok, capacity, error
	tokens                                  *prometheus.CounterVec   // deployment, kind: prompt, completion
	cost                                    *prometheus.CounterVec   // deployment (only those with prices)
	inflight                                *prometheus.GaugeVec
	slots                                   *prometheus.GaugeVec
	rate, fleetRate, share, members, paused *prometheus.GaugeVec
	learned, learnedAge, ceiling            *prometheus.GaugeVec
	source                                  *prometheus.GaugeVec // deployment, source: 1 for the current one
	auditDropped                            prometheus.Counter
	failovers                               *prometheus.CounterVec // pool, deployment: the member failed over from
	tokenLimit                              *prometheus.GaugeVec
}

// Call outcome classes of mq_worker_call_duration_seconds.
const (
	callOK       = "ok"       // the answer parsed into every output field
	callCapacity = "capacity" // 429 (not insufficient_quota), 503, 529
	callError    = "error"    // any other error, an answer that did not parse included
)

// resultOutcomes are the outcome label values of mq_worker_results_total: ok, and the
// reasons of the outcome table (outcome.go) a final result can carry.
var resultOutcomes = []string{"ok", wire.ReasonCancelled, wire.ReasonCapacityTimeout, wire.ReasonContentFiltered,
	wire.ReasonContextLengthExceeded, wire.ReasonEmptyResponse, wire.ReasonInvalidJSON, wire.ReasonLLMCallFailed,
	wire.ReasonMaxDeliveries, wire.ReasonMissingField, wire.ReasonTruncated, wire.ReasonRetryExhausted,
	wire.ReasonTypeMismatch, wire.ReasonUnknownDeployment}

// callBuckets span an LLM call: a fast answer to the default 120 s timeout.
var callBuckets = []float64{0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120}

func newMetrics() *metrics {
	return &metrics{
		calls:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_calls_total", Help: "LLM calls started."}, []string{"deployment"}),
		capacity: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_capacity_signals_total", Help: "Capacity errors (429/503/529) seen."}, []string{"deployment"}),
		naks:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_naks_total", Help: "Jobs NAKed with delay."}, []string{"deployment"}),
		reasks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_reasks_total",
			Help: "Queries asked again because the answer was not usable (invalid JSON, a missing or mistyped field)."}, []string{"deployment"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_results_total", Help: "Final results published, by outcome."}, []string{"deployment", "outcome"}),
		poison:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_poison_total", Help: "Poison jobs dead-lettered."}, []string{"deployment"}),
		resultRetries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_result_publish_retries_total",
			Help: "Final results whose publish failed and was retried (the job is kept, the call not repeated)."}, []string{"deployment"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mq_worker_call_duration_seconds",
			Help:    "LLM call latency (the HTTP call, retries of the client included), by outcome class: ok, capacity (429/503/529), error.",
			Buckets: callBuckets}, []string{"deployment", "outcome"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_tokens_total",
			Help: "Tokens the provider billed (the usage of every answer, failed ones included), by kind: prompt, completion."}, []string{"deployment", "kind"}),
		cost: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_cost_usd_total",
			Help: "Estimated cost in USD of the billed tokens, at the deployment's configured prices (deployments without prices have no series)."}, []string{"deployment"}),
		inflight: gauge("mq_worker_inflight_calls", "LLM calls in flight on this worker."),
		slots:    gauge("mq_worker_slots", "This worker's slots: in-flight calls it may make (--concurrency capped by max_concurrency)."),

		rate:       gauge("mq_throttle_rate", "This worker's dispatch rate to the deployment (req/s): fleet rate x share."),
		fleetRate:  gauge("mq_throttle_fleet_rate", "The fleet's dispatch rate to the deployment (req/s)."),
		share:      gauge("mq_throttle_share", "This worker's share of the fleet rate."),
		members:    gauge("mq_throttle_members", "Workers pacing the deployment (heartbeats)."),
		paused:     gauge("mq_throttle_paused_seconds", "Seconds left of a fleet-wide Retry-After pause."),
		learned:    gauge("mq_throttle_learned_rate", "The deployment's remembered rate (req/s, fleet-wide), as last read or saved by this worker."),
		learnedAge: gauge("mq_throttle_learned_age_seconds", "Age of the remembered rate."),
		ceiling:    gauge("mq_throttle_ceiling", "The rate the provider's rate-limit headers allow (req/s; 0: not stated)."),
		source: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mq_throttle_source",
			Help: "What the fleet rate rests on: 1 for the current source (headers, learned, probing), 0 for the others."}, []string{"deployment", "source"}),
		auditDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "mq_worker_audit_dropped_total",
			Help: "Audit records not stored (too many pending or a publish error)."}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_pool_failovers_total",
			Help: "Calls of a deployment pool's job made again on another member after a capacity, deployment-wide or transient error of this member."}, []string{"pool", "deployment"}),
		tokenLimit: gauge("mq_throttle_token_limit", "The deployment's token budget in force (tokens per minute, fleet-wide; 0: none)."),
	}
}

// initDeployment creates a deployment's series at 0 (its slots at their number), so that
// rate() and alerts see them before the first event.
func (m *metrics) initDeployment(d *deployment) {
	a := d.alias
	for _, c := range []*prometheus.CounterVec{m.calls, m.capacity, m.naks, m.poison, m.resultRetries} {
		c.WithLabelValues(a)
	}
	for _, o := range resultOutcomes {
		m.results.WithLabelValues(a, o)
	}
	for _, o := range []string{callOK, callCapacity, callError} {
		m.latency.WithLabelValues(a, o)
	}
	m.tokens.WithLabelValues(a, "prompt")
	m.tokens.WithLabelValues(a, "completion")
	if d.prices.set() {
		m.cost.WithLabelValues(a)
	}
	m.inflight.WithLabelValues(a).Set(0)
	m.slots.WithLabelValues(a).Set(float64(d.slots))
}

// Collectors returns the worker's metrics for registration.
func (w *Worker) Collectors() []prometheus.Collector {
	return append([]prometheus.Collector{w.m.calls, w.m.capacity, w.m.naks, w.m.reasks, w.m.results, w.m.poison, w.m.resultRetries,
		w.m.latency, w.m.tokens, w.m.cost, w.m.inflight, w.m.slots, w.m.failovers, w.m.tokenLimit,
		w.m.rate, w.m.fleetRate, w.m.share, w.m.members, w.m.paused, w.m.learned, w.m.learnedAge, w.m.ceiling, w.m.source, w.m.auditDropped},
		w.cache.m.collectors()...)
}

func gauge(name, help string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{"deployment"})
}

// Prices are a deployment's token prices in USD per 1000 tokens, for the estimated cost
// (mq_worker_cost_usd_total). Zero prices count no cost.
type Prices struct {
	PromptPer1K     float64
	CompletionPer1K float64
}

func (p Prices) set() bool { return p.PromptPer1K > 0 || p.CompletionPer1K > 0 }

// cost is the estimated cost in USD of a call's tokens.
func (p Prices) cost(prompt, completion int64) float64 {
	return float64(prompt)/1000*p.PromptPer1K + float64(completion)/1000*p.CompletionPer1K
}

// callClass is the outcome class of mq_worker_call_duration_seconds.
func (c callClass) metric() string {
	switch c {
	case classOK:
		return callOK
	case classCapacity:
		return callCapacity
	}
	return callError
}

// observeCall records one finished call: its latency by outcome class (a call cut by the
// drain timeout is not a latency), and the tokens and cost of its answer.
func (m *metrics) observeCall(d *deployment, class callClass, seconds float64, s spend) {
	if class != classDrained {
		m.latency.WithLabelValues(d.alias, class.metric()).Observe(seconds)
	}
	if s.prompt > 0 {
		m.tokens.WithLabelValues(d.alias, "prompt").Add(float64(s.prompt))
	}
	if s.completion > 0 {
		m.tokens.WithLabelValues(d.alias, "completion").Add(float64(s.completion))
	}
	if d.prices.set() {
		if c := d.prices.cost(s.prompt, s.completion); c > 0 {
			m.cost.WithLabelValues(d.alias).Add(c)
		}
	}
}
