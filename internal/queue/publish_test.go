package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/natstest"
	"github.com/multiquery/multiquery/internal/queue"
)

// queue.Publish answers as jetstream's Publish does, error for error: a stored message,
// a first writer that won, a full stream, a subject no stream takes, a message over
// max_payload, an ended context.
func TestPublishAnswersAsJetStreamPublishDoes(t *testing.T) {
	nc, js := natstest.Start(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, sc := range []jetstream.StreamConfig{
		{Name: "FIRST", Subjects: []string{"first.>"}, MaxMsgsPerSubject: 1, Discard: jetstream.DiscardNew, DiscardNewPerSubject: true},
		{Name: "FULL", Subjects: []string{"full.>"}, MaxMsgs: 1, Discard: jetstream.DiscardNew},
	} {
		if _, err := js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	ended, stop := context.WithCancel(ctx)
	stop()
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		subject string
		data    []byte
		want    func(error) bool
	}{
		{"a stored message", ctx, "first.a", []byte("1"), func(err error) bool { return err == nil }},
		{"a first writer that won", ctx, "first.a", []byte("2"), queue.IsFirstWriterLost},
		{"a full stream", ctx, "full.b", []byte("3"), queue.IsStreamFull},
		{"a subject no stream takes", ctx, "nowhere.c", []byte("4"), func(err error) bool { return errors.Is(err, jetstream.ErrNoStreamResponse) }},
		{"a message over max_payload", ctx, "first.d", make([]byte, nc.MaxPayload()+1), func(err error) bool { return err != nil }},
		{"an ended context", ended, "first.e", []byte("5"), func(err error) bool { return errors.Is(err, context.Canceled) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// jetstream's Publish first, on the same subject: the full stream's first
			// message fills it for both.
			if tc.name == "a full stream" {
				if _, err := js.Publish(ctx, "full.fill", []byte("0")); err != nil {
					t.Fatal(err)
				}
			}
			_, theirs := js.Publish(tc.ctx, tc.subject, tc.data)
			ours := queue.Publish(tc.ctx, nc, tc.subject, tc.data)
			if tc.name == "a stored message" { // the first writer is jetstream's publish
				ours = queue.Publish(tc.ctx, nc, "first.a2", tc.data)
			}
			if !tc.want(ours) || !tc.want(theirs) {
				t.Fatalf("queue.Publish: %v; jetstream.Publish: %v", ours, theirs)
			}
			if (ours == nil) != (theirs == nil) || (ours != nil && ours.Error() != theirs.Error()) {
				t.Fatalf("queue.Publish: %v; jetstream.Publish: %v: want the same error", ours, theirs)
			}
			var a, b *jetstream.APIError
			if errors.As(ours, &a) != errors.As(theirs, &b) || (a != nil && *a != *b) {
				t.Fatalf("API errors %+v and %+v differ", a, b)
			}
		})
	}
}
