package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	json "github.com/goccy/go-json"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Publish publishes data on subject and waits for the stream's ack, as
// jetstream.JetStream.Publish does and with the same errors (a server error as a
// *jetstream.APIError, jetstream.ErrNoStreamResponse when no stream answers after
// jetstream's two retries, jetstream.ErrInvalidJSAck for an answer that is not an ack).
// It reads a plain ack without decoding it: nats.go decodes every ack by reflection
// (encoding/json), ~3 % of a worker's CPU at 0 latency, for the one fact that the
// message is stored.
func Publish(ctx context.Context, nc *nats.Conn, subject string, data []byte) error {
	m := &nats.Msg{Subject: subject, Data: data}
	resp, err := nc.RequestMsgWithContext(ctx, m)
	for r := 0; errors.Is(err, nats.ErrNoResponders) && r < jetstream.DefaultPubRetryAttempts; r++ {
		select { // a stream leader moving: jetstream's retry, as Publish makes it
		case <-ctx.Done():
		case <-time.After(jetstream.DefaultPubRetryWait):
		}
		resp, err = nc.RequestMsgWithContext(ctx, m)
	}
	if errors.Is(err, nats.ErrNoResponders) {
		return jetstream.ErrNoStreamResponse
	}
	if err != nil {
		return err
	}
	return ackError(resp.Data)
}

// plainAck is how a stored message's ack starts (nats-server writes an error first).
var plainAck = []byte(`{"stream":"`)

// ackError reads a publish ack: nil for a stored message, the server's error, or
// jetstream.ErrInvalidJSAck.
func ackError(data []byte) error {
	if bytes.HasPrefix(data, plainAck) && len(data) > len(plainAck)+1 && data[len(plainAck)] != '"' && !bytes.Contains(data, []byte(`"error"`)) {
		return nil
	}
	var ack struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
	}
	if err := json.Unmarshal(data, &ack); err != nil {
		return jetstream.ErrInvalidJSAck
	}
	if ack.Error != nil {
		return fmt.Errorf("nats: %w", ack.Error)
	}
	if ack.Stream == "" {
		return jetstream.ErrInvalidJSAck
	}
	return nil
}
