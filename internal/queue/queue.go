// Package queue owns the JetStream topology (streams, consumers, KV buckets), the
// connection settings every process uses, and the error codes that carry meaning
// (first-writer-wins rejections). Nothing here is a broker of its own: scale-out is
// JetStream's (cluster, replicas, more consumers).
package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/natsconn"
	"github.com/multiquery/multiquery/internal/wire"
)

// Topology names and sizes the streams. Zero values take the defaults.
type Topology struct {
	// Names are the deployment's stream, subject and bucket names (the zero value: the
	// default names, no prefix).
	Names    wire.Names
	Replicas int           // stream replicas (1 single server, 3 in a cluster)
	AckWait  time.Duration // job consumer AckWait; workers send InProgress well within it
	// MaxDeliver is the crash-loop backstop per job.
	MaxDeliver int
	// MaxAckPending bounds the jobs in flight per deployment consumer (fleet-wide).
	MaxAckPending int
	// JobConsumerInactive is the InactiveThreshold of job consumers: workers stop
	// polling a run with nothing to deliver, and its consumer goes after this long.
	JobConsumerInactive time.Duration
	// Duplicates is the dedup window for Nats-Msg-Id.
	Duplicates time.Duration
	// MaxJobs and MaxBytes bound the jobs stream; publishers back off when it is full.
	MaxJobs      int64
	MaxJobsBytes int64
	// AuditMaxAge and AuditMaxBytes bound the audit stream (old records are discarded).
	AuditMaxAge   time.Duration
	AuditMaxBytes int64
	// ResultsTTL is how long the results bucket (wire.BucketResults) keeps a run's
	// stored files: the bound on what the collector stores per run.
	ResultsTTL time.Duration
	// CacheMaxAge and CacheMaxBytes bound the prompt cache bucket (wire.BucketCache):
	// an answer is kept at most CacheMaxAge (a pipeline's cache ttl may accept less);
	// when the bucket is full, answers are not stored until older ones expire.
	CacheMaxAge   time.Duration
	CacheMaxBytes int64
	// Limits replaces the default limits of the streams it names, by their default
	// names (MQ_JOBS, whatever the prefix); mqctl provision fills it from its limits
	// file.
	Limits map[string]StreamLimits
}

// StreamLimits are the limits of one stream: the operator's to choose (mqctl provision
// sets them; no process changes them).
type StreamLimits struct {
	MaxAge     time.Duration // 0: no age limit
	MaxBytes   int64         // -1: no size limit
	MaxMsgs    int64         // -1: no count limit
	MaxMsgSize int32         // -1: the server's max_payload
}

// Defaults of Topology (the processes' --replicas, --ack-wait and --results-ttl).
const (
	DefaultReplicas   = 1
	DefaultAckWait    = 10 * time.Second
	DefaultResultsTTL = 30 * 24 * time.Hour
	// DefaultCacheMaxAge is the longest a prompt cache answer is kept.
	DefaultCacheMaxAge = 30 * 24 * time.Hour
)

// Defaults returns the topology with every zero field set.
func (t Topology) Defaults() Topology {
	if t.Replicas <= 0 {
		t.Replicas = DefaultReplicas
	}
	if t.AckWait <= 0 {
		t.AckWait = DefaultAckWait
	}
	if t.MaxDeliver <= 0 {
		// Large but finite: capacity NAKs count as deliveries, and a job may wait out
		// an hour of 429s with Retry-After of a second or less.
		t.MaxDeliver = 100000
	}
	if t.MaxAckPending <= 0 {
		t.MaxAckPending = 10000
	}
	if t.JobConsumerInactive <= 0 {
		t.JobConsumerInactive = time.Hour
	}
	if t.Duplicates <= 0 {
		t.Duplicates = 2 * time.Minute
	}
	if t.MaxJobs == 0 {
		t.MaxJobs = -1
	}
	if t.MaxJobsBytes == 0 {
		t.MaxJobsBytes = -1
	}
	if t.AuditMaxAge <= 0 {
		t.AuditMaxAge = 7 * 24 * time.Hour
	}
	if t.AuditMaxBytes == 0 {
		t.AuditMaxBytes = 1 << 30
	}
	if t.ResultsTTL <= 0 {
		t.ResultsTTL = DefaultResultsTTL
	}
	if t.CacheMaxAge <= 0 {
		t.CacheMaxAge = DefaultCacheMaxAge
	}
	if t.CacheMaxBytes == 0 {
		t.CacheMaxBytes = -1
	}
	return t
}

// Streams returns the stream configurations of the topology: the first-writer-wins
// record streams (input, results, rows), the work queues (jobs, submit), and the kept
// records (audit, advisories, dead letters).
func (t Topology) Streams() []jetstream.StreamConfig {
	t = t.Defaults()
	cfgs := t.streams(t.Names)
	// Limits name the streams by their default names: one limits file serves every prefix.
	for i, c := range t.streams(wire.Names{}) {
		if l, ok := t.Limits[c.Name]; ok {
			cfgs[i].MaxAge, cfgs[i].MaxBytes, cfgs[i].MaxMsgs, cfgs[i].MaxMsgSize = l.MaxAge, l.MaxBytes, l.MaxMsgs, l.MaxMsgSize
		}
	}
	return cfgs
}

// streams are the stream configurations with names n, without Limits.
func (t Topology) streams(n wire.Names) []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		batched(t.firstWins(n.StreamInput(), n.InputSubjects(), "run records and input rows; first publish per subject wins")),
		batched(t.workQueue(n.StreamJobs(), n.JobSubjects(), "query jobs, one consumer per deployment", t.MaxJobs, t.MaxJobsBytes)),
		t.firstWins(n.StreamResults(), n.ResultSubjects(), "final result per query; first result wins"),
		t.workQueue(n.StreamSubmit(), n.SubmitSubjects(), "runs submitted by upstream systems to the producer service", -1, -1),
		t.firstWins(n.StreamRows(), n.RowSubjects(), "emitted rows; first publish per row wins"),
		t.auditStream(n),
		t.advisoriesStream(n),
		t.deadStream(n),
	}
}

// Buckets returns the KV bucket configurations of the topology (the collector's lease
// bucket is package lease's).
func (t Topology) Buckets() []jetstream.KeyValueConfig {
	t = t.Defaults()
	n := t.Names
	return []jetstream.KeyValueConfig{
		{Bucket: n.BucketRetry(), Description: "per-job retry state <run>.<row>.<query>", TTL: 7 * 24 * time.Hour, Storage: jetstream.FileStorage, Replicas: t.Replicas},
		{Bucket: n.BucketFleet(), Description: "deployment aliases ever served by a worker, with the last time seen", Storage: jetstream.FileStorage, Replicas: t.Replicas, History: 1},
		{Bucket: n.BucketRuns(), Description: "run status, watermark and checkpoints", Storage: jetstream.FileStorage, Replicas: t.Replicas, History: 1},
		{Bucket: n.BucketThrottle(), Description: "each deployment's last good rate, the fleet throttle's memory", Storage: jetstream.FileStorage, Replicas: t.Replicas, History: 1, TTL: throttleMemoryTTL},
		{Bucket: n.BucketCache(), Description: "prompt cache: a request's hash to the model's answer", Storage: jetstream.FileStorage, Replicas: t.Replicas, History: 1,
			TTL: t.CacheMaxAge, MaxBytes: t.CacheMaxBytes},
	}
}

// ObjectStores returns the object store buckets of the topology: the completed runs'
// files (wire.BucketResults), kept ResultsTTL.
func (t Topology) ObjectStores() []jetstream.ObjectStoreConfig {
	t = t.Defaults()
	return []jetstream.ObjectStoreConfig{
		{Bucket: t.Names.BucketResults(), Description: "completed runs' output files <run>/<file>", TTL: t.ResultsTTL, Storage: jetstream.FileStorage, Replicas: t.Replicas},
	}
}

// firstWins is a stream that keeps the first message of each subject and rejects the
// later ones (MaxMsgsPerSubject 1, DiscardNewPerSubject): a re-publish is safe.
// batched lets c take fast-ingest batches (allow_batched, nats-server 2.14+): the
// producer publishes its jobs and rows in batches with a few acks each (a stream
// without it gets them one by one).
func batched(c jetstream.StreamConfig) jetstream.StreamConfig {
	c.AllowBatchPublish = true
	return c
}

func (t Topology) firstWins(name, subj, desc string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:                 name,
		Description:          desc,
		Subjects:             []string{subj},
		Retention:            jetstream.LimitsPolicy,
		Storage:              jetstream.FileStorage,
		Replicas:             t.Replicas,
		MaxMsgsPerSubject:    1,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		MaxMsgs:              -1,
		MaxBytes:             -1,
		Duplicates:           t.Duplicates,
	}
}

// workQueue is a work-queue stream bounded by maxMsgs and maxBytes (-1: unbounded);
// when full, a publish is rejected (publishers back off).
func (t Topology) workQueue(name, subj, desc string, maxMsgs, maxBytes int64) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        name,
		Description: desc,
		Subjects:    []string{subj},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     maxMsgs,
		MaxBytes:    maxBytes,
		Duplicates:  t.Duplicates,
	}
}

// auditStream keeps one record per LLM HTTP attempt, the oldest discarded past
// AuditMaxAge or AuditMaxBytes.
func (t Topology) auditStream(n wire.Names) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        n.StreamAudit(),
		Description: "one record per LLM HTTP attempt",
		Subjects:    []string{n.AuditSubjects()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		Discard:     jetstream.DiscardOld,
		MaxAge:      t.AuditMaxAge,
		MaxBytes:    t.AuditMaxBytes,
		MaxMsgs:     -1,
	}
}

// advisoriesStream keeps the MaxDeliver advisories of MQ_JOBS (a work queue: a worker
// takes each one) for up to 30 days.
func (t Topology) advisoriesStream(n wire.Names) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        n.StreamAdvisories(),
		Description: "MaxDeliver advisories of " + n.StreamJobs() + ", kept until a worker dead-letters the job",
		Subjects:    []string{n.MaxDeliveriesAdvisories()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		Discard:     jetstream.DiscardOld,
		MaxAge:      30 * 24 * time.Hour,
		MaxMsgs:     -1,
		MaxBytes:    -1,
	}
}

// deadStream keeps dead-lettered job payloads with their reason for 30 days.
func (t Topology) deadStream(n wire.Names) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        n.StreamDead(),
		Description: "dead-lettered job payloads with the reason",
		Subjects:    []string{n.DeadSubjects()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		Discard:     jetstream.DiscardOld,
		MaxAge:      30 * 24 * time.Hour,
		MaxMsgs:     -1,
		MaxBytes:    -1,
	}
}

// FleetRefresh is how often a worker refreshes its aliases in the fleet registry.
const FleetRefresh = 10 * time.Second

// throttleMemoryTTL bounds how long a remembered rate is kept: the throttle ignores
// one older than a day (throttle.MaxLearnedAge).
const throttleMemoryTTL = 24 * time.Hour

// JobConsumerName is the durable consumer of one run's jobs for one deployment. The
// length prefix keeps the name unique ("a_b"+"c" and "a"+"b_c" differ).
func JobConsumerName(deployment, run string) string {
	return fmt.Sprintf("w%d-%s-%s", len(deployment), deployment, run)
}

// ParseJobConsumerName is JobConsumerName's inverse: the deployment and run of a job
// consumer's name; ok is false for any other name.
func ParseJobConsumerName(name string) (deployment, run string, ok bool) {
	n, rest, found := strings.Cut(strings.TrimPrefix(name, "w"), "-")
	if !found || !strings.HasPrefix(name, "w") {
		return "", "", false
	}
	k, err := strconv.Atoi(n)
	if err != nil || k <= 0 || len(rest) < k+2 || rest[k] != '-' || strconv.Itoa(k) != n {
		return "", "", false
	}
	return rest[:k], rest[k+1:], true
}

// EnsureJobConsumer creates or updates the durable pull consumer of one run's jobs for
// one deployment. One consumer per (deployment, run): a NAK-delayed message keeps
// counting toward MaxAckPending, so a throttled deployment must not share a consumer
// with the others, and workers fetch from the runs of a deployment in turn, so a small
// run is not queued behind a big one. Workers stop polling a run with nothing to
// deliver, so its consumer goes after JobConsumerInactive (a worker creates it again
// when the run has new jobs); the collector deletes a finished run's consumers.
func EnsureJobConsumer(ctx context.Context, js jetstream.JetStream, t Topology, deployment, run string) (jetstream.Consumer, error) {
	t = t.Defaults()
	cfg := jetstream.ConsumerConfig{
		Durable:           JobConsumerName(deployment, run),
		Description:       "query jobs of run " + run + " for deployment " + deployment,
		FilterSubject:     t.Names.JobDeploymentRunFilter(deployment, run),
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           t.AckWait,
		MaxDeliver:        t.MaxDeliver,
		MaxAckPending:     t.MaxAckPending,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: t.JobConsumerInactive,
	}
	var c jetstream.Consumer
	err := Retry(ctx, func(ctx context.Context) error {
		var err error
		c, err = js.CreateOrUpdateConsumer(ctx, t.Names.StreamJobs(), cfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s: %w", cfg.Durable, err)
	}
	return c, nil
}

// Server error codes with meaning for us.
const (
	// codeStoreFailed (JSStreamStoreFailedF) is the one code nats-server gives every
	// store rejection: a per-subject duplicate, but also a full stream, a message too
	// large and a closed store. Only the description (the store error's text) tells
	// them apart.
	codeStoreFailed         = 10077
	codeWrongLastSequence   = 10071
	codeMsgExceedsMaximum   = 10054 // JSStreamMessageExceedsMaximumErr (stream max_msg_size)
	codeAccountResources    = 10002 // JSAccountResourcesExceededErr
	codeStorageResources    = 10047 // JSStorageResourcesExceededErr
	codeInsufficientStorage = 10023 // JSInsufficientResourcesErr
)

// Descriptions of the store errors behind codeStoreFailed, as nats-server v2.15 words
// them (server/store.go: ErrMaxMsgsPerSubject, ErrMaxMsgs, ErrMaxBytes, ErrMsgTooLarge,
// ErrStoreClosed). The server sends nothing more specific.
const (
	descMaxMsgsPerSubject = "maximum messages per subject exceeded"
	descMaxMsgs           = "maximum messages exceeded"
	descMaxBytes          = "maximum bytes exceeded"
	descMsgTooLarge       = "message too large"
)

func storeFailed(err error, desc string) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == codeStoreFailed && strings.EqualFold(apiErr.Description, desc)
}

// IsFirstWriterLost reports whether a publish was rejected because the subject already
// holds its one message (first-writer-wins, MaxMsgsPerSubject 1 with DiscardNew): the
// work is already done. Any other store rejection is not.
func IsFirstWriterLost(err error) bool { return storeFailed(err, descMaxMsgsPerSubject) }

// IsStreamFull reports whether a publish was rejected because the stream (or the
// account's storage) is at its limit with DiscardNew: the message is not stored, and a
// publisher must wait for room and publish it again, never count it done.
func IsStreamFull(err error) bool {
	if storeFailed(err, descMaxMsgs) || storeFailed(err, descMaxBytes) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == codeAccountResources ||
		apiErr.ErrorCode == codeStorageResources || apiErr.ErrorCode == codeInsufficientStorage)
}

// IsTooLarge reports whether a message can never be published as it is: over the
// connection's max_payload (refused by the client) or the stream's message size limit.
// Retrying it is pointless.
func IsTooLarge(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) || storeFailed(err, descMsgTooLarge) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == codeMsgExceedsMaximum
}

// streamFull counts publishes that a full stream rejected and that wait to be retried.
var streamFull = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "mq_publish_stream_full_total",
	Help: "Publishes rejected by a full stream (max messages or bytes) and retried after a backoff, by subject kind (jobs, input, results...).",
}, []string{"kind"})

// Collectors returns the metrics of this package, for a process's /metrics.
func Collectors() []prometheus.Collector { return []prometheus.Collector{streamFull} }

// StreamFullWaits returns the counter of publishes of one subject kind ("jobs",
// "results"...) that this process retried because their stream was full.
func StreamFullWaits(kind string) prometheus.Counter { return streamFull.WithLabelValues(kind) }

// RetryPublish runs publish until the message is stored. A first-writer-wins rejection
// counts as stored (nil). A full stream is waited out with backoff until ctx ends: each
// wait is counted in mq_publish_stream_full_total under the subject's kind
// (wire.Names.Kind) and logged, so a stuck pipeline shows why. A message too large
// fails at once (IsTooLarge). Other errors are retried as Retry does.
func RetryPublish(ctx context.Context, log zerolog.Logger, names wire.Names, subject string, publish func(ctx context.Context) error) error {
	kind := names.Kind(subject)
	waits := 0
	err := retry(ctx, func(ctx context.Context) (bool, error) {
		err := publish(ctx)
		switch {
		case err == nil || IsFirstWriterLost(err):
			if waits > 0 {
				log.Info().Str("subject", subject).Int("waits", waits).Msg("stream has room again: published")
			}
			return false, nil
		case IsStreamFull(err):
			streamFull.WithLabelValues(kind).Inc()
			if waits%10 == 0 {
				log.Warn().Err(err).Str("subject", subject).Int("waits", waits).Msg("stream full: the publish waits for room and is retried")
			}
			waits++
			return true, err
		default:
			return retryable(err), err
		}
	})
	if err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// IsKeyExists reports whether a KV Create lost to an earlier writer.
func IsKeyExists(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == codeWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// retryable reports whether a JetStream API error is worth retrying (elections,
// timeouts, a server not yet ready, a full stream).
func retryable(err error) bool {
	if err == nil {
		return false
	}
	for _, target := range []error{context.DeadlineExceeded, nats.ErrTimeout, nats.ErrNoResponders,
		jetstream.ErrNoHeartbeat, nats.ErrDisconnected, nats.ErrConnectionReconnecting,
		jetstream.ErrJetStreamNotEnabled} {
		if errors.Is(err, target) {
			return true
		}
	}
	if IsFirstWriterLost(err) || IsTooLarge(err) {
		return false
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 10008: cluster not available / no leader; 503 codes during elections, a full
		// stream, a store closed while a stream moves.
		return apiErr.Code == 503 || apiErr.ErrorCode == 10008 || IsStreamFull(err)
	}
	return false
}

// Retry runs fn until it succeeds, fails with a non-retryable error, or ctx ends.
// Each attempt gets a 5 s deadline; waits grow from 50 ms to 2 s with jitter.
func Retry(ctx context.Context, fn func(ctx context.Context) error) error {
	return retry(ctx, func(ctx context.Context) (bool, error) {
		err := fn(ctx)
		return retryable(err), err
	})
}

// retry runs fn until it returns nil, an error it says is final (again false), or ctx
// ends.
func retry(ctx context.Context, fn func(ctx context.Context) (again bool, err error)) error {
	wait := 50 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		again, err := fn(actx)
		cancel()
		if err == nil || !again || ctx.Err() != nil {
			if err != nil && ctx.Err() != nil {
				return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
			}
			return err
		}
		d := time.Duration(float64(wait) * (0.5 + rand.Float64()))
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %w)", ctx.Err(), err)
		case <-time.After(d):
		}
		wait = min(wait*2, 2*time.Second)
	}
}

// Connect dials NATS with settings for long-lived processes: reconnect forever,
// a name for monitoring, and state changes logged; opts add the connection's security
// (natsconn.Resolved.Opts). Errors and log lines name the URL without its password.
// Permission violations are logged and remembered (see Denied).
func Connect(url, name string, log zerolog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	d := &denials{}
	all := append([]nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(64 << 20),
		nats.ClosedHandler(func(c *nats.Conn) { connDenials.Delete(c) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info().Str("url", c.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if d.record(err) {
				log.Error().Err(err).Msg("nats permissions violation: this role's user lacks a permission (docs/OPERATIONS.md, Security and permissions)")
				return
			}
			log.Warn().Err(err).Msg("nats async error")
		}),
	}, opts...)
	nc, err := nats.Connect(url, all...)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", natsconn.RedactURL(url), err)
	}
	connDenials.Store(nc, d)
	return nc, nil
}

// ConnectJetStream dials NATS (see Connect) and returns the connection and its
// JetStream context.
func ConnectJetStream(url, name string, log zerolog.Logger, opts ...nats.Option) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := Connect(url, name, log, opts...)
	if err != nil {
		return nil, nil, err
	}
	// Async publishes get a timeout: a server killed after taking a message never acks
	// it, and the publisher must find out and publish again (ids make that idempotent).
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(10*time.Second), jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// WaitConnected waits until the connection is up (Connect retries in the background),
// or fails after timeout naming the URL.
func WaitConnected(ctx context.Context, nc *nats.Conn, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	url := nc.Opts.Url
	if url == "" {
		url = strings.Join(nc.Opts.Servers, ",")
	}
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			if last := nc.LastError(); last != nil {
				return fmt.Errorf("connect %s: not connected after %s: %w", natsconn.RedactURL(url), timeout, last)
			}
			return fmt.Errorf("connect %s: not connected after %s", natsconn.RedactURL(url), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
