package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// RawLoopConfig sizes the baseline the pipeline is measured against: the least a
// durable queue with one model call per job can cost on the same machine.
type RawLoopConfig struct {
	NATSURL string
	SimURL  string // "" = no HTTP call per job
	Jobs    int
	Slots   int // jobs handled at once
	Prefix  string
	// Passes is how many times the loop runs its Jobs (at least once), in one process
	// on the same streams and connections: the passes after the first measure a loop
	// that has run before, as a long-running consumer has.
	Passes int
	// After, if set, is called with each pass's result before the next pass starts
	// (the benchmark's child reports it and waits for its parent there).
	After func(RawLoopResult) error
}

// RawLoopResult is what the loop measured of itself in one pass.
type RawLoopResult struct {
	Pass int           `json:"pass"` // from 1
	Jobs int           `json:"jobs"`
	Wall time.Duration `json:"wall"`
	// CPU is this process's user+system time in the pass; the first pass's counts from
	// the process's start (connections and streams made, the heap grown).
	CPU time.Duration `json:"cpu"`
}

// RawLoop runs the baseline: async publish of every job to a work-queue stream, pull
// consume with Slots jobs at once, per job (optionally) one HTTP chat call to llmsim,
// publish the result awaiting its ack, ack the job; the results consumed as they come.
// No templates, no throttle, no audit, no collector: the floor under the pipeline. It
// returns each pass's result.
func RawLoop(ctx context.Context, c RawLoopConfig) ([]RawLoopResult, error) {
	nc, err := nats.Connect(c.NATSURL)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	l := &rawLoop{c: c, js: js, jobsName: c.Prefix + "RAWJOBS", resName: c.Prefix + "RAWRES",
		jobsSubj: c.Prefix + "rawjobs", resSubj: c.Prefix + "rawres", sem: make(chan struct{}, c.Slots)}
	defer l.deleteStreams()
	cons, err := l.createStreams(ctx)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = c.Slots, c.Slots
	l.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	results, err := js.OrderedConsumer(ctx, l.resName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	resCtx, err := results.Consume(func(m jetstream.Msg) { l.done.Add(1) })
	if err != nil {
		return nil, err
	}
	defer resCtx.Stop()

	var out []RawLoopResult
	for pass := 1; pass <= max(1, c.Passes); pass++ {
		var cpu0 time.Duration // the first pass counts from the process's start
		if pass > 1 {
			cpu0 = selfCPU()
		}
		began := time.Now()
		if err := l.publishJobs(ctx, pass); err != nil {
			return out, err
		}
		err = l.consume(ctx, cons, int64(pass*c.Jobs))
		wall := time.Since(began)
		l.wg.Wait()
		if err != nil {
			return out, err
		}
		if l.firstErr != nil {
			return out, l.firstErr
		}
		res := RawLoopResult{Pass: pass, Jobs: c.Jobs, Wall: wall, CPU: selfCPU() - cpu0}
		out = append(out, res)
		if c.After != nil {
			if err := c.After(res); err != nil {
				return out, err
			}
		}
	}
	return out, nil
}

// selfCPU is this process's user+system time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawLoop is one run of the baseline.
type rawLoop struct {
	c                 RawLoopConfig
	js                jetstream.JetStream
	client            *http.Client
	jobsName, resName string // streams
	jobsSubj, resSubj string // subject prefixes
	done              atomic.Int64
	sem               chan struct{} // the slots in use
	wg                sync.WaitGroup
	errOnce           sync.Once
	firstErr          error
}

// rawChatBody is the chat call of every job.
var rawChatBody = []byte(`{"model":"raw","messages":[{"role":"user","content":"Answer about item 1; reply in json."}],"response_format":{"type":"json_object"}}`)

// createStreams creates the jobs and results streams afresh and the jobs consumer.
func (l *rawLoop) createStreams(ctx context.Context) (jetstream.Consumer, error) {
	for _, sc := range []jetstream.StreamConfig{
		{Name: l.jobsName, Subjects: []string{l.jobsSubj + ".>"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage},
		{Name: l.resName, Subjects: []string{l.resSubj + ".>"}, Storage: jetstream.FileStorage},
	} {
		_ = l.js.DeleteStream(ctx, sc.Name)
		if _, err := l.js.CreateStream(ctx, sc); err != nil {
			return nil, fmt.Errorf("create stream %s: %w", sc.Name, err)
		}
	}
	cons, err := l.js.CreateOrUpdateConsumer(ctx, l.jobsName, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: 30 * time.Second, MaxAckPending: l.c.Slots * 2})
	if err != nil {
		return nil, fmt.Errorf("create consumer: %w", err)
	}
	return cons, nil
}

func (l *rawLoop) deleteStreams() {
	_ = l.js.DeleteStream(context.Background(), l.jobsName)
	_ = l.js.DeleteStream(context.Background(), l.resName)
}

// publishJobs publishes every job of a pass asynchronously and waits for the acks.
func (l *rawLoop) publishJobs(ctx context.Context, pass int) error {
	payload := bytes.Repeat([]byte("x"), 600) // about a rendered job
	for i := (pass - 1) * l.c.Jobs; i < pass*l.c.Jobs; i++ {
		// A busy machine acks slowly: wait for room in the async window, never fail on it.
		if _, err := l.js.PublishAsync(l.jobsSubj+"."+strconv.Itoa(i), payload, jetstream.WithStallWait(time.Minute)); err != nil {
			return fmt.Errorf("publish job %d: %w", i, err)
		}
	}
	select {
	case <-l.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// consume fetches jobs into free slots, each handled in its own goroutine, until
// `results` results in all have been consumed from the results stream.
func (l *rawLoop) consume(ctx context.Context, cons jetstream.Consumer, results int64) error {
	for l.done.Load() < results {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		free := l.c.Slots - len(l.sem)
		if free == 0 {
			time.Sleep(200 * time.Microsecond)
			continue
		}
		batch, err := cons.Fetch(free, jetstream.FetchMaxWait(100*time.Millisecond))
		if err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		for m := range batch.Messages() {
			l.sem <- struct{}{}
			l.wg.Add(1)
			go l.handle(ctx, m)
		}
	}
	return nil
}

// handle answers one job (calling llmsim when SimURL is set), publishes its result and
// acks it; a failure NAKs the job and is kept as the loop's error.
func (l *rawLoop) handle(ctx context.Context, m jetstream.Msg) {
	defer l.wg.Done()
	defer func() { <-l.sem }()
	out := []byte(`{"answer":"ok"}`)
	if l.c.SimURL != "" {
		var err error
		if out, err = l.call(ctx); err != nil {
			l.fail(m, err)
			return
		}
	}
	if _, err := l.js.Publish(ctx, l.resSubj+"."+m.Subject()[len(l.jobsSubj)+1:], out); err != nil {
		l.fail(m, err)
		return
	}
	_ = m.Ack()
}

func (l *rawLoop) fail(m jetstream.Msg, err error) {
	l.errOnce.Do(func() { l.firstErr = err })
	_ = m.Nak()
}

// call makes the job's chat call and returns the answer's content.
func (l *rawLoop) call(ctx context.Context) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, l.c.SimURL+"/v1/chat/completions", bytes.NewReader(rawChatBody))
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		return nil, err
	}
	var answer struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	err = json.NewDecoder(resp.Body).Decode(&answer)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || len(answer.Choices) == 0 {
		return nil, fmt.Errorf("answer: %v", err)
	}
	return []byte(answer.Choices[0].Message.Content), nil
}
