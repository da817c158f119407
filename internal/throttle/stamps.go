package throttle

import "time"

// stamps are the times of events within a horizon, oldest first (the 429s seen
// fleet-wide; a member's permits in slow start). add drops those at or before the
// horizon it is given; the slice's front is reused once half of it is spent, so an add
// costs an append, however many events a window holds.
type stamps struct {
	at   []time.Time
	head int // at[:head] are past the horizon
}

// add records an event at t (never before the last one added) and forgets those at or
// before from.
func (s *stamps) add(t, from time.Time) {
	for s.head < len(s.at) && !s.at[s.head].After(from) {
		s.head++
	}
	if s.head > len(s.at)/2 {
		s.at = append(s.at[:0], s.at[s.head:]...)
		s.head = 0
	}
	s.at = append(s.at, t)
}

// since counts the events after from.
func (s *stamps) since(from time.Time) int {
	n := 0
	for i := len(s.at) - 1; i >= s.head && s.at[i].After(from); i-- {
		n++
	}
	return n
}
