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
}

// RawLoopResult is what the loop measured of itself.
type RawLoopResult struct {
	Jobs int           `json:"jobs"`
	Wall time.Duration `json:"wall"`
}

// RawLoop runs the baseline: async publish of every job to a work-queue stream, pull
// consume with Slots jobs at once, per job (optionally) one HTTP chat call to llmsim,
// publish the result awaiting its ack, ack the job; then consume the results. No
// templates, no throttle, no audit, no collector: the floor under the pipeline.
func RawLoop(ctx context.Context, c RawLoopConfig) (RawLoopResult, error) {
	nc, err := nats.Connect(c.NATSURL)
	if err != nil {
		return RawLoopResult{}, fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return RawLoopResult{}, err
	}
	l := &rawLoop{c: c, js: js, jobsName: c.Prefix + "RAWJOBS", resName: c.Prefix + "RAWRES",
		jobsSubj: c.Prefix + "rawjobs", resSubj: c.Prefix + "rawres", sem: make(chan struct{}, c.Slots)}
	defer l.deleteStreams()
	cons, err := l.createStreams(ctx)
	if err != nil {
		return RawLoopResult{}, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = c.Slots, c.Slots
	l.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}

	began := time.Now()
	if err := l.publishJobs(ctx); err != nil {
		return RawLoopResult{}, err
	}
	err = l.consume(ctx, cons)
	wall := time.Since(began)
	l.wg.Wait()
	if err != nil {
		return RawLoopResult{}, err
	}
	if l.firstErr != nil {
		return RawLoopResult{}, l.firstErr
	}
	return RawLoopResult{Jobs: c.Jobs, Wall: wall}, nil
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

// publishJobs publishes every job asynchronously and waits for the acks.
func (l *rawLoop) publishJobs(ctx context.Context) error {
	payload := bytes.Repeat([]byte("x"), 600) // about a rendered job
	for i := range l.c.Jobs {
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

// consume fetches jobs into free slots, each handled in its own goroutine, until every
// job's result is on the results stream.
func (l *rawLoop) consume(ctx context.Context, cons jetstream.Consumer) error {
	results, err := l.js.OrderedConsumer(ctx, l.resName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return err
	}
	resCtx, err := results.Consume(func(m jetstream.Msg) { l.done.Add(1) })
	if err != nil {
		return err
	}
	defer resCtx.Stop()
	for l.done.Load() < int64(l.c.Jobs) {
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
