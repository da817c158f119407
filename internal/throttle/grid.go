package throttle

import (
	"math"
	"sort"
	"time"
)

// The dispatch grid. Independent pacers, jittered or not, add up to a Poisson-like stream
// that a small-burst token bucket rejects at high utilisation (docs/THROTTLE.md: 80 % of
// the limit at 16 workers). Instead every member derives the same slot schedule from the
// fleet rate, the member list and the wall clock: period p (of length Period) holds n
// evenly spaced slots, n = floor(rate x Period + h(p)) (h spreads the fraction of a slot
// over periods), and slot j belongs to the member whose part of [0,1) (cumulative
// demand-weighted shares over the sorted member ids) holds frac(j*phi + h'(p)), a
// low-discrepancy walk that spreads each member's slots evenly too. The aggregate is then
// evenly spaced whatever the fleet size; members' clocks may differ by about the provider's
// burst / limit (100 ms at 50/s, burst 5) before slots of different members bunch up.

const (
	phi     = 0.6180339887498949 // golden ratio conjugate
	plastic = 0.7548776662466927 // 1/plastic number: a second, independent irrational
)

func frac(x float64) float64 { return x - math.Floor(x) }

// slot identifies a slot: its period and its index in that period.
type slot struct {
	period int64
	index  int
}

func (a slot) after(b slot) bool {
	return a.period > b.period || a.period == b.period && a.index > b.index
}

// grid is one member's view of the fleet schedule.
type grid struct {
	period time.Duration
	cum    []float64 // cumulative shares of the sorted members, last = 1
	me     int       // this member's index in cum
}

// slots is the number of slots of period p at rate (req/s).
func (g grid) slots(rate float64, p int64) int {
	return int(math.Floor(rate*g.period.Seconds() + frac(float64(p)*plastic)))
}

// owner is the member index that owns slot j of period p.
func (g grid) owner(j int, p int64) int {
	x := frac(float64(j)*phi + frac(float64(p)*plastic*0.5))
	i := sort.Search(len(g.cum), func(i int) bool { return g.cum[i] > x })
	return min(i, len(g.cum)-1)
}

// at is the time of slot s at rate.
func (g grid) at(s slot, n int) time.Time {
	step := float64(g.period) / float64(n)
	return time.Unix(0, s.period*int64(g.period)+int64((float64(s.index)+0.5)*step))
}

// maxScan bounds the search for a member's next slot (a tiny share at a tiny rate):
// past it the caller waits and plans again.
const maxScan = 1 << 16

// next returns this member's first slot at or after from and after cursor (the last slot
// it used: identifying slots by index means a rate change that moves the grid never hands
// a member the slot it just used). ok is false if none was found within maxScan slots; t
// is then where the search stopped.
func (g grid) next(from time.Time, rate float64, cursor slot) (t time.Time, s slot, ok bool) {
	pn := int64(g.period)
	p := from.UnixNano() / pn
	if cursor.period > p {
		p = cursor.period
	}
	scanned := 0
	for scanned < maxScan {
		n := g.slots(rate, p)
		if n > 0 {
			step := float64(pn) / float64(n)
			j := max(0, int(float64(from.UnixNano()-p*pn)/step-0.5))
			if cursor.period == p {
				j = max(j, cursor.index+1)
			}
			for ; j < n && scanned < maxScan; j++ {
				scanned++
				s := slot{p, j}
				if at := g.at(s, n); !at.Before(from) && g.owner(j, p) == g.me {
					return at, s, true
				}
			}
		}
		scanned++
		p++
	}
	return time.Unix(0, p*pn), slot{}, false
}
