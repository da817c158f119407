package worker

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	calls                                   *prometheus.CounterVec
	capacity                                *prometheus.CounterVec
	naks                                    *prometheus.CounterVec
	results                                 *prometheus.CounterVec
	poison                                  *prometheus.CounterVec
	resultRetries                           *prometheus.CounterVec
	rate, fleetRate, share, members, paused *prometheus.GaugeVec
	learned, learnedAge, ceiling            *prometheus.GaugeVec
	source                                  *prometheus.GaugeVec // deployment, source: 1 for the current one
	auditDropped                            prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		calls:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_calls_total", Help: "LLM calls started."}, []string{"deployment"}),
		capacity: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_capacity_signals_total", Help: "Capacity errors (429/503/529) seen."}, []string{"deployment"}),
		naks:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_naks_total", Help: "Jobs NAKed with delay."}, []string{"deployment"}),
		results:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_results_total", Help: "Final results published, by outcome."}, []string{"deployment", "outcome"}),
		poison:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_poison_total", Help: "Poison jobs dead-lettered."}, []string{"deployment"}),
		resultRetries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_result_publish_retries_total",
			Help: "Final results whose publish failed and was retried (the job is kept, the call not repeated)."}, []string{"deployment"}),
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
	}
}

// Collectors returns the worker's metrics for registration.
func (w *Worker) Collectors() []prometheus.Collector {
	return append([]prometheus.Collector{w.m.calls, w.m.capacity, w.m.naks, w.m.results, w.m.poison, w.m.resultRetries,
		w.m.rate, w.m.fleetRate, w.m.share, w.m.members, w.m.paused, w.m.learned, w.m.learnedAge, w.m.ceiling, w.m.source, w.m.auditDropped},
		w.cache.m.collectors()...)
}

func gauge(name, help string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{"deployment"})
}
