// Package backlog owns the queue's scaling signal: the jobs of each deployment that wait
// for a worker, mq_jobs_backlog{deployment}. It is the sum of NumPending (stored, never
// delivered) over the deployment's job consumers (one per run, queue.JobConsumerName).
// NumAckPending is left out on purpose: it holds the jobs in flight and the jobs NAKed
// with a delay (waiting out a 429's Retry-After, a deployment pause or a paused run),
// which more workers would not serve any sooner.
//
// One process polls (the collector holding its lease): a single consumer list request
// per interval, whatever the number of workers, runs and deployments.
package backlog

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// DefaultInterval is how often Run reads the job consumers.
const DefaultInterval = 5 * time.Second

// Meter polls the job consumers and exports the backlog per deployment. Poll and Run are
// not for concurrent use.
type Meter struct {
	js    jetstream.JetStream
	names wire.Names
	every time.Duration
	log   zerolog.Logger
	gauge *prometheus.GaugeVec
	// known are the deployments seen: kept at 0 once their consumers are gone, so a
	// drained queue reads 0, not "no data".
	known map[string]bool
}

// New returns a meter polling every every (0: DefaultInterval).
func New(js jetstream.JetStream, names wire.Names, every time.Duration, log zerolog.Logger) *Meter {
	if every <= 0 {
		every = DefaultInterval
	}
	return &Meter{js: js, names: names, every: every, log: log.With().Str("component", "backlog").Logger(), known: map[string]bool{},
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mq_jobs_backlog",
			Help: "Jobs waiting for a worker, per deployment: never delivered (NumPending of its job consumers); jobs in flight or NAKed with a delay (a 429's Retry-After, a pause) are not counted."},
			[]string{"deployment"})}
}

// Collectors returns the meter's gauge for a process's /metrics.
func (m *Meter) Collectors() []prometheus.Collector { return []prometheus.Collector{m.gauge} }

// Poll reads every job consumer once, sets the gauge and returns the backlog per
// deployment.
func (m *Meter) Poll(ctx context.Context) (map[string]uint64, error) {
	s, err := m.js.Stream(ctx, m.names.StreamJobs())
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", m.names.StreamJobs(), err)
	}
	backlog := map[string]uint64{}
	list := s.ListConsumers(ctx)
	for info := range list.Info() {
		dep, _, ok := queue.ParseJobConsumerName(info.Name)
		if !ok {
			continue
		}
		backlog[dep] += info.NumPending
	}
	if err := list.Err(); err != nil {
		return nil, fmt.Errorf("list consumers of %s: %w", m.names.StreamJobs(), err)
	}
	for dep := range backlog {
		m.known[dep] = true
	}
	for dep := range m.known {
		m.gauge.WithLabelValues(dep).Set(float64(backlog[dep]))
	}
	return backlog, nil
}

// Run polls every interval until ctx ends, then removes the gauge's series: only the
// process that polls exports a backlog (a standby collector exports none, so the
// fleet's sum is not counted twice).
func (m *Meter) Run(ctx context.Context) {
	defer m.gauge.Reset()
	t := time.NewTicker(m.every)
	defer t.Stop()
	for {
		if _, err := m.Poll(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn().Err(err).Msg("job backlog not read")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
