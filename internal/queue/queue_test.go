package queue

import (
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Issue 8, item 1: nats-server answers every store rejection with err_code 10077; only a
// per-subject duplicate means the work is done. The descriptions are nats-server
// v2.15's store errors (server/store.go).
func TestOnlyAPerSubjectDuplicateCountsAsDone(t *testing.T) {
	t.Parallel()
	store := func(desc string) error {
		return fmt.Errorf("publish: %w", &jetstream.APIError{Code: 503, ErrorCode: 10077, Description: desc})
	}
	tests := []struct {
		name                 string
		err                  error
		done, full, tooLarge bool
		retry                bool
	}{
		{name: "a per-subject duplicate is done", err: store("maximum messages per subject exceeded"), done: true},
		{name: "a stream at max messages waits for room", err: store("maximum messages exceeded"), full: true, retry: true},
		{name: "a stream at max bytes waits for room", err: store("maximum bytes exceeded"), full: true, retry: true},
		{name: "a message too large for the store fails for good", err: store("message too large"), tooLarge: true},
		{name: "a message over the stream's max_msg_size fails for good", err: &jetstream.APIError{Code: 400, ErrorCode: 10054, Description: "message size exceeds maximum allowed"}, tooLarge: true},
		{name: "a message over max_payload fails for good", err: fmt.Errorf("publish: %w", nats.ErrMaxPayload), tooLarge: true},
		{name: "a closed store is retried", err: store("store is closed"), retry: true},
		{name: "account storage exhausted waits for room", err: &jetstream.APIError{Code: 400, ErrorCode: 10002, Description: "resource limits exceeded for account"}, full: true, retry: true},
		{name: "no leader is retried", err: &jetstream.APIError{Code: 503, ErrorCode: 10008}, retry: true},
		{name: "a bad request is final", err: &jetstream.APIError{Code: 400, ErrorCode: 10003, Description: "bad request"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := IsFirstWriterLost(tt.err); got != tt.done {
				t.Errorf("IsFirstWriterLost = %v, want %v", got, tt.done)
			}
			if got := IsStreamFull(tt.err); got != tt.full {
				t.Errorf("IsStreamFull = %v, want %v", got, tt.full)
			}
			if got := IsTooLarge(tt.err); got != tt.tooLarge {
				t.Errorf("IsTooLarge = %v, want %v", got, tt.tooLarge)
			}
			if got := retryable(tt.err); got != tt.retry {
				t.Errorf("retryable = %v, want %v", got, tt.retry)
			}
		})
	}
}

func TestParseJobConsumerNameInvertsJobConsumerName(t *testing.T) {
	for _, tc := range [][2]string{{"gpt4", "run-1"}, {"a_b", "c"}, {"a", "b_c"}, {"x-y", "0199a3b2-7c1d-7e2f-9a3b-000000000001"}} {
		dep, run, ok := ParseJobConsumerName(JobConsumerName(tc[0], tc[1]))
		if !ok || dep != tc[0] || run != tc[1] {
			t.Errorf("ParseJobConsumerName(JobConsumerName(%q, %q)) = %q, %q, %v", tc[0], tc[1], dep, run, ok)
		}
	}
	for _, name := range []string{"", "producer-service", "w", "w0--r", "wx-a-r", "w3-ab-r", "w2-ab", "w02-ab-r", "w2-abxr"} {
		if dep, run, ok := ParseJobConsumerName(name); ok {
			t.Errorf("ParseJobConsumerName(%q) = %q, %q: not a job consumer's name", name, dep, run)
		}
	}
}
