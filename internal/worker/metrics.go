package worker

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	calls    *prometheus.CounterVec
	capacity *prometheus.CounterVec
	naks     *prometheus.CounterVec
	results  *prometheus.CounterVec
	poison   *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		calls:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_calls_total", Help: "LLM calls started."}, []string{"deployment"}),
		capacity: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_capacity_signals_total", Help: "Capacity errors (429/503/529) seen."}, []string{"deployment"}),
		naks:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_naks_total", Help: "Jobs NAKed with delay."}, []string{"deployment"}),
		results:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_results_total", Help: "Final results published, by outcome."}, []string{"deployment", "outcome"}),
		poison:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mq_worker_poison_total", Help: "Poison jobs dead-lettered."}, []string{"deployment"}),
	}
}

// Collectors returns the worker's metrics for registration.
func (w *Worker) Collectors() []prometheus.Collector {
	return []prometheus.Collector{w.m.calls, w.m.capacity, w.m.naks, w.m.results, w.m.poison}
}
