package worker

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/multiquery/multiquery/internal/natstest"
)

// A puller asks for what it can start and no more, reuses its inbox, and its messages
// carry the jetstream acknowledgements the worker relies on.
func TestAPullerFetchesOnlyWhatItAsksForOverOneInbox(t *testing.T) {
	srv := natstest.Start(t)
	nc, js := srv.Connect(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "S", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := js.Publish(ctx, "s."+strconv.Itoa(i), []byte("job")); err != nil {
			t.Fatal(err)
		}
	}
	p := newPuller(nc, "S", "c", 8)
	defer p.close()
	var got []jetstream.Msg
	collect := func(m jetstream.Msg) { got = append(got, m) }

	if n, err := p.fetch(ctx, 2, collect); n != 2 || err != nil {
		t.Fatalf("fetch 2: %d, %v", n, err)
	}
	inbox := p.inbox
	if n, err := p.fetch(ctx, 8, collect); n != 3 || err != nil { // 404 ends the batch early
		t.Fatalf("fetch 8 of 3 left: %d, %v", n, err)
	}
	if n, err := p.fetch(ctx, 8, collect); n != 0 || err != nil {
		t.Fatalf("fetch from nothing: %d, %v", n, err)
	}
	if p.inbox != inbox {
		t.Fatal("the inbox changed between fetches")
	}
	md, err := got[0].Metadata()
	if err != nil || md.NumDelivered != 1 || md.Sequence.Stream != 1 || md.Stream != "S" || md.Consumer != "c" {
		t.Fatalf("metadata %+v, %v", md, err)
	}
	if err := got[0].InProgress(); err != nil {
		t.Fatal(err)
	}
	if err := got[0].NakWithDelay(time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := got[0].Ack(); !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		t.Fatalf("a second acknowledgement: %v", err)
	}
	for _, m := range got[1:] {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumAckPending != 1 || info.NumPending != 0 {
		t.Fatalf("ack pending %d (the NAKed one), pending %d", info.NumAckPending, info.NumPending)
	}

	gone := newPuller(nc, "S", "missing", 8)
	defer gone.close()
	if _, err := gone.fetch(ctx, 1, collect); err == nil {
		t.Fatal("a fetch from a missing consumer succeeded")
	}
}
