package queue

import (
	stdjson "encoding/json"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkPublishAck compares reading a stored message's ack as queue.Publish does
// with nats.go's decode of it (jetstream.Publish: encoding/json into its ack type).
func BenchmarkPublishAck(b *testing.B) {
	ack := []byte(`{"stream":"MQ_RESULTS","seq":123456}`)
	b.Run("queue", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := ackError(ack); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("nats.go", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r struct {
				*jetstream.PubAck
				Error *jetstream.APIError `json:"error,omitempty"`
			}
			if err := stdjson.Unmarshal(ack, &r); err != nil || r.Error != nil {
				b.Fatal(err)
			}
		}
	})
}
