package llmsim

import (
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// Stats counts the chat completion requests a [Server] has answered since it
// started or since the last [Server.ResetStats]. A request is counted, logged
// and leaves InFlight just before its response is written, so a client that
// holds a response always finds it in Stats and the request log.
type Stats struct {
	// Requests counts answered chat requests of every outcome.
	Requests int64 `json:"requests"`
	// OK counts 200 answers that carry a correct answer (no fault).
	OK       int64            `json:"ok"`
	ByStatus map[int]int64    `json:"by_status"`
	ByFault  map[string]int64 `json:"by_fault"`
	// Limited counts 429s from the limiter: rate, tokens or concurrency.
	Limited int64 `json:"limited"`
	// LimitedConcurrency is the part of Limited due to MaxConcurrency.
	LimitedConcurrency int64 `json:"limited_concurrency"`
	// Injected429 counts 429s from fault injection (percentages, bursts,
	// directives).
	Injected429 int64 `json:"injected_429"`
	// InFlight and PeakInFlight count chat requests inside the handler, from
	// the key check to the response being written, latency wait included.
	InFlight         int64            `json:"in_flight"`
	PeakInFlight     int64            `json:"peak_in_flight"`
	PromptTokens     int64            `json:"prompt_tokens"`
	CompletionTokens int64            `json:"completion_tokens"`
	ByRoute          map[string]int64 `json:"by_route"`
	ByDeployment     map[string]int64 `json:"by_deployment"`
}

// counters is the live, concurrency-safe form of Stats.
type counters struct {
	inFlight atomic.Int64
	peak     atomic.Int64

	mu sync.Mutex
	s  Stats // maps and totals; InFlight and PeakInFlight unused
}

func newCounters() *counters {
	c := &counters{}
	c.reset()
	return c
}

func (c *counters) enter() {
	n := c.inFlight.Add(1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (c *counters) leave() { c.inFlight.Add(-1) }

func (c *counters) record(r *RequestLog) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.s.Requests++
	c.s.ByStatus[r.Status]++
	if r.Fault != "" {
		c.s.ByFault[r.Fault]++
		if r.Fault == Fault429 {
			c.s.Injected429++
		}
	} else if r.Status == 200 {
		c.s.OK++
	}
	if r.Limited {
		c.s.Limited++
		if r.limitedBy == limitConcurrency {
			c.s.LimitedConcurrency++
		}
	}
	c.s.PromptTokens += int64(r.PromptTokens)
	c.s.CompletionTokens += int64(r.CompletionTokens)
	c.s.ByRoute[r.Route]++
	if r.Deployment != "" {
		c.s.ByDeployment[r.Deployment]++
	}
}

func (c *counters) snapshot() Stats {
	c.mu.Lock()
	s := c.s
	s.ByStatus = maps.Clone(c.s.ByStatus)
	s.ByFault = maps.Clone(c.s.ByFault)
	s.ByRoute = maps.Clone(c.s.ByRoute)
	s.ByDeployment = maps.Clone(c.s.ByDeployment)
	c.mu.Unlock()
	s.InFlight = c.inFlight.Load()
	s.PeakInFlight = c.peak.Load()
	return s
}

// reset zeroes the totals; the peak restarts from the current in-flight count.
func (c *counters) reset() {
	c.mu.Lock()
	c.s = Stats{
		ByStatus:     map[int]int64{},
		ByFault:      map[string]int64{},
		ByRoute:      map[string]int64{},
		ByDeployment: map[string]int64{},
	}
	c.mu.Unlock()
	c.peak.Store(c.inFlight.Load())
}

// RequestLog is one chat request as recorded by GET /requests.
type RequestLog struct {
	// Seq increases by one per recorded request, in completion order.
	Seq       uint64    `json:"seq"`
	Received  time.Time `json:"received"`
	Status    int       `json:"status"`
	LatencyMS float64   `json:"latency_ms"`
	// Route is "openai" or "azure".
	Route      string `json:"route"`
	Deployment string `json:"deployment,omitempty"`
	Model      string `json:"model,omitempty"`
	// Fault is the injected fault kind, if any.
	Fault string `json:"fault,omitempty"`
	// Limited is true when the limiter rejected the request with a 429.
	Limited bool `json:"limited"`
	// Dispatch is the X-Mq-Dispatch-Time request header, verbatim.
	Dispatch string `json:"dispatch,omitempty"`
	// Marker is the first [[mark:TOKEN]] token of the prompt.
	Marker           string `json:"marker,omitempty"`
	PromptTokens     int    `json:"prompt_tokens,omitempty"`
	CompletionTokens int    `json:"completion_tokens,omitempty"`

	limitedBy string
}

// Reasons for a limiter rejection.
const (
	limitRequests    = "requests"
	limitTokens      = "tokens"
	limitConcurrency = "concurrency"
)

// requestLogSize is how many entries GET /requests keeps.
const requestLogSize = 100_000

// ring keeps the last size request logs.
type ring struct {
	mu   sync.Mutex
	size int
	buf  []RequestLog
	last uint64 // Seq of the newest entry
}

func newRing(size int) *ring { return &ring{size: size} }

// add assigns the next Seq and stores r.
func (g *ring) add(r RequestLog) RequestLog {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.last++
	r.Seq = g.last
	if len(g.buf) < g.size {
		g.buf = append(g.buf, r)
	} else {
		g.buf[(r.Seq-1)%uint64(g.size)] = r
	}
	return r
}

// since returns the kept entries with Seq > since, oldest first.
func (g *ring) since(since uint64) []RequestLog {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := uint64(len(g.buf))
	if since >= g.last || n == 0 {
		return []RequestLog{}
	}
	first := g.last - n + 1
	if since < first-1 {
		since = first - 1
	}
	out := make([]RequestLog, 0, g.last-since)
	for seq := since + 1; seq <= g.last; seq++ {
		out = append(out, g.buf[(seq-1)%uint64(g.size)])
	}
	return out
}
