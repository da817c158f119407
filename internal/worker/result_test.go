package worker

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
	"github.com/multiquery/multiquery/internal/wire"
)

// An answer too large to store as a result (with the row's data it carries) fails its
// query instead of retrying for ever: the result stored is a row_too_large failure
// naming the sizes, and it keeps the row's data, so the row is written as an error row.
// A result that fits is stored as it is, with the data.
func TestAResultTooLargeToStoreFailsItsQueryAndKeepsTheRow(t *testing.T) {
	const limit = 8 << 10
	srv := natstest.StartWith(t, func(o *server.Options) { o.MaxPayload = limit })
	_, js := srv.Connect(t)
	ctx := context.Background()
	if err := queue.Ensure(ctx, js, queue.Topology{}); err != nil {
		t.Fatal(err)
	}
	w := &Worker{js: js, log: zerolog.Nop()}
	row := json.RawMessage(`{"id":"r0"}`)
	for i, answer := range []string{"short", strings.Repeat("x", limit)} {
		res := &wire.Result{V: wire.Version, Run: "big", Row: i, Query: "q", OK: true, Model: "m", Data: row,
			Fields: map[string]json.RawMessage{"q_answer": json.RawMessage(`"` + answer + `"`)}}
		if err := w.publishResult(ctx, res); err != nil {
			t.Fatalf("row %d: %v", i, err)
		}
		s, err := js.Stream(ctx, wire.StreamResults)
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.GetLastMsgForSubject(ctx, wire.ResultSubject("big", i, "q"))
		if err != nil {
			t.Fatalf("row %d: no result stored: %v", i, err)
		}
		var got wire.Result
		if err := wire.Decode(m.Data, &got); err != nil {
			t.Fatal(err)
		}
		if string(got.Data) != string(row) || got.V != wire.VersionCarried {
			t.Fatalf("row %d: stored result v%d carries %s, want v%d with the row's data %s", i, got.V, got.Data, wire.VersionCarried, row)
		}
		tooLarge := i == 1
		if got.OK == tooLarge || (tooLarge && (got.Error == nil || got.Error.Reason != wire.ReasonRowTooLarge ||
			got.Fields != nil || !strings.Contains(got.Error.Message, "max_payload"))) {
			t.Fatalf("row %d: stored ok=%v error=%+v fields=%d; want a %s failure without fields only for the answer over the limit",
				i, got.OK, got.Error, len(got.Fields), wire.ReasonRowTooLarge)
		}
		if tooLarge && res.OK {
			t.Fatalf("the caller's result still says ok after a failure was stored")
		}
	}
}
