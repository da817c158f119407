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
	jobsName, resName := c.Prefix+"RAWJOBS", c.Prefix+"RAWRES"
	jobsSubj, resSubj := c.Prefix+"rawjobs", c.Prefix+"rawres"
	for _, sc := range []jetstream.StreamConfig{
		{Name: jobsName, Subjects: []string{jobsSubj + ".>"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage},
		{Name: resName, Subjects: []string{resSubj + ".>"}, Storage: jetstream.FileStorage},
	} {
		_ = js.DeleteStream(ctx, sc.Name)
		if _, err := js.CreateStream(ctx, sc); err != nil {
			return RawLoopResult{}, fmt.Errorf("create stream %s: %w", sc.Name, err)
		}
	}
	defer func() {
		_ = js.DeleteStream(context.Background(), jobsName)
		_ = js.DeleteStream(context.Background(), resName)
	}()
	cons, err := js.CreateOrUpdateConsumer(ctx, jobsName, jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: 30 * time.Second, MaxAckPending: c.Slots * 2})
	if err != nil {
		return RawLoopResult{}, fmt.Errorf("create consumer: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = c.Slots, c.Slots
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	body := []byte(`{"model":"raw","messages":[{"role":"user","content":"Answer about item 1; reply in json."}],"response_format":{"type":"json_object"}}`)

	began := time.Now()
	payload := bytes.Repeat([]byte("x"), 600) // about a rendered job
	for i := range c.Jobs {
		// A busy machine acks slowly: wait for room in the async window, never fail on it.
		if _, err := js.PublishAsync(jobsSubj+"."+strconv.Itoa(i), payload, jetstream.WithStallWait(time.Minute)); err != nil {
			return RawLoopResult{}, fmt.Errorf("publish job %d: %w", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return RawLoopResult{}, ctx.Err()
	}

	var done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	sem := make(chan struct{}, c.Slots)
	var wg sync.WaitGroup
	handle := func(m jetstream.Msg) {
		defer wg.Done()
		defer func() { <-sem }()
		out := []byte(`{"answer":"ok"}`)
		if c.SimURL != "" {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.SimURL+"/v1/chat/completions", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				errOnce.Do(func() { firstErr = err })
				_ = m.Nak()
				return
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
				errOnce.Do(func() { firstErr = fmt.Errorf("answer: %v", err) })
				_ = m.Nak()
				return
			}
			out = []byte(answer.Choices[0].Message.Content)
		}
		if _, err := js.Publish(ctx, resSubj+"."+m.Subject()[len(jobsSubj)+1:], out); err != nil {
			errOnce.Do(func() { firstErr = err })
			_ = m.Nak()
			return
		}
		_ = m.Ack()
	}
	results, err := js.OrderedConsumer(ctx, resName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return RawLoopResult{}, err
	}
	resCtx, err := results.Consume(func(m jetstream.Msg) { done.Add(1) })
	if err != nil {
		return RawLoopResult{}, err
	}
	defer resCtx.Stop()
	for done.Load() < int64(c.Jobs) {
		if ctx.Err() != nil {
			return RawLoopResult{}, ctx.Err()
		}
		free := c.Slots - len(sem)
		if free == 0 {
			time.Sleep(200 * time.Microsecond)
			continue
		}
		batch, err := cons.Fetch(free, jetstream.FetchMaxWait(100*time.Millisecond))
		if err != nil {
			return RawLoopResult{}, fmt.Errorf("fetch: %w", err)
		}
		for m := range batch.Messages() {
			sem <- struct{}{}
			wg.Add(1)
			go handle(m)
		}
	}
	wall := time.Since(began)
	wg.Wait()
	if firstErr != nil {
		return RawLoopResult{}, firstErr
	}
	return RawLoopResult{Jobs: c.Jobs, Wall: wall}, nil
}
