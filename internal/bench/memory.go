package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// MemoryResult is the collector's footprint over one run.
type MemoryResult struct {
	Rows      int
	PeakRSSKB int64
	Wall      time.Duration
}

// CollectorMemory runs the collector process on a run of rows x 2 queries whose input
// rows and results are published straight to JetStream (no model calls), results of
// nearby rows in shuffled order as a worker fleet would finish them, and reports the
// collector's peak RSS.
func CollectorMemory(ctx context.Context, bin, dir string, rows int) (MemoryResult, error) {
	res := MemoryResult{Rows: rows}
	s, err := StartStack(bin, dir, nil)
	if err != nil {
		return res, err
	}
	defer s.Stop()
	if err := s.StartCollector(); err != nil {
		return res, err
	}
	nc, js, err := queue.ConnectJetStream(s.NATSURL, "bench-memory", zerolog.Nop())
	if err != nil {
		return res, err
	}
	defer nc.Close()
	if err := queue.WaitConnected(ctx, nc, 10*time.Second); err != nil {
		return res, err
	}
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		return res, err
	}
	run := fmt.Sprintf("mem-%d", rows)
	start := time.Now()
	pub := func(subject string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		_, err = js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: b})
		for err != nil && ctx.Err() == nil { // too many pending: let acks drain
			<-js.PublishAsyncComplete()
			_, err = js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: b})
		}
		return err
	}
	qs := []wire.QueryInfo{{Name: "a", Columns: []string{"a_score", "a_why"}}, {Name: "b", Columns: []string{"b_score", "b_why"}}}
	if err := pub(wire.InputOpenSubject(run), wire.Open{V: 1, Run: run, Queries: qs, Order: wire.OrderInput, Deployments: []string{"default"}, Created: time.Now()}); err != nil {
		return res, err
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	const window = 500
	result := func(row int, q string) wire.Result {
		return wire.Result{V: 1, Run: run, Row: row, Query: q, OK: true, Model: "bench", Attempt: 1, Usage: &wire.Usage{PromptTokens: 90, CompletionTokens: 20, TotalTokens: 110},
			Fields: map[string]json.RawMessage{q + "_score": json.RawMessage("4"), q + "_why": json.RawMessage(`"a rationale of moderate length for row ` + strconv.Itoa(row) + `"`)}}
	}
	for base := 0; base < rows; base += window {
		n := min(window, rows-base)
		for i := range n {
			data := fmt.Sprintf(`{"id":"r%d","text":"an input row of typical size with some words in it, row %d"}`, base+i, base+i)
			if err := pub(wire.InputRowSubject(run, base+i), wire.Row{V: 1, Run: run, Row: base + i, Data: json.RawMessage(data)}); err != nil {
				return res, err
			}
		}
		for _, i := range rnd.Perm(2 * n) {
			row, q := base+i/2, []string{"a", "b"}[i%2]
			if err := pub(wire.ResultSubject(run, row, q), result(row, q)); err != nil {
				return res, err
			}
		}
	}
	if err := pub(wire.InputSealSubject(run), wire.Seal{V: 1, Run: run, Rows: rows}); err != nil {
		return res, err
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return res, ctx.Err()
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	if _, err := s.WaitSummary(wctx, run); err != nil {
		return res, err
	}
	res.Wall = time.Since(start)
	res.PeakRSSKB, err = procStatusKB(s.pid("collector"), "VmHWM")
	return res, err
}
