package queue

import (
	"errors"
	"regexp"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A publish the server refuses for lack of permission is reported only to the
// connection's error handler, and the request behind it times out. Connect remembers the
// refused subjects per connection, so that Ensure can tell "not allowed" from "slow"
// and fail with a message that names the permission instead of retrying forever.

// denials are the subjects a connection was refused to publish to.
type denials struct {
	mu       sync.Mutex
	subjects map[string]bool
}

// connDenials maps a *nats.Conn made by Connect to its denials.
var connDenials sync.Map

var publishDenied = regexp.MustCompile(`(?i)permissions violation for publish to "([^"]+)"`)

// record notes a permission violation; it reports whether err was one.
func (d *denials) record(err error) bool {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return false
	}
	if m := publishDenied.FindStringSubmatch(err.Error()); m != nil {
		d.mu.Lock()
		if d.subjects == nil {
			d.subjects = map[string]bool{}
		}
		d.subjects[m[1]] = true
		d.mu.Unlock()
	}
	return true
}

// Denied reports whether the server refused js's connection a publish to subject (a
// JetStream API request such as $JS.API.STREAM.CREATE.MQ_JOBS). Always false for a
// connection not made by Connect.
func Denied(js jetstream.JetStream, subject string) bool {
	v, ok := connDenials.Load(js.Conn())
	if !ok {
		return false
	}
	d := v.(*denials)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.subjects[subject]
}
