package worker

import "testing"

// newTestReserve is a fetch loop's slots with calls call slots and a reserve, holding
// held jobs and the slot the loop has just taken.
func newTestReserve(t *testing.T, calls, held int) *reserve {
	t.Helper()
	r := &reserve{slots: make(chan struct{}, calls+reserveOf(calls)), calls: calls}
	for range held + 1 {
		r.slots <- struct{}{}
	}
	return r
}

// A worker alone, or before its first fetch has read the backlog, fetches as many jobs
// as it has slots for, call slots and reserve: nobody else could take them sooner.
func TestAWorkerAloneFetchesAheadToTheLastJob(t *testing.T) {
	r := newTestReserve(t, 8, 8) // every call slot calling
	if n := r.limit(queueState{3, 0, false}); n != 10 {
		t.Errorf("alone, 3 jobs queued: limit %d, want 10 (its slots)", n)
	}
	if n := r.limit(queueState{-1, 8, false}); n != 10 {
		t.Errorf("backlog not known yet: limit %d, want 10", n)
	}
	if !(queueState{3, 0, false}).opens() || !(queueState{-1, 8, false}).opens() {
		t.Error("the reserve is shut for a worker alone or a backlog not known")
	}
}

// In a fleet, a worker fetches beyond its free call slots only as far as the other
// workers' call slots' worth of jobs stay queued after the fetch.
func TestAFleetMemberFetchesAheadOnlyWhileOthersStillFindJobs(t *testing.T) {
	busy := newTestReserve(t, 8, 8) // no call slot free
	for _, c := range []struct{ backlog, want int }{{40, 10}, {10, 2}, {9, 1}, {8, 0}, {3, 0}} {
		if n := busy.limit(queueState{c.backlog, 8, true}); n != c.want {
			t.Errorf("all calls busy, %d queued, 8 call slots elsewhere: limit %d, want %d", c.backlog, n, c.want)
		}
	}
	idle := newTestReserve(t, 8, 2) // 6 call slots free
	for _, c := range []struct{ backlog, want int }{{20, 10}, {12, 6}, {4, 6}} {
		if n := idle.limit(queueState{c.backlog, 8, true}); n != c.want {
			t.Errorf("6 call slots free, %d queued, 8 elsewhere: limit %d, want %d", c.backlog, n, c.want)
		}
	}
	if (queueState{8, 8, true}).opens() || !(queueState{9, 8, true}).opens() {
		t.Error("the reserve opens at a queue of the other workers' slots, or stays shut above it")
	}
}

// A backlog read before the other workers' last fetches says nothing of the queue now: the
// worker fetches for its free call slots only, and decides on jobs ahead by what that
// fetch reads.
func TestAStaleBacklogFetchesForFreeCallSlotsOnly(t *testing.T) {
	r := newTestReserve(t, 8, 5)
	if n := r.limit(queueState{1000, 8, false}); n != 3 {
		t.Errorf("stale backlog of 1000, 3 call slots free: limit %d, want 3", n)
	}
	if (queueState{1000, 8, false}).opens() {
		t.Error("a stale backlog opened the reserve")
	}
}

// A shut reserve keeps its slots taken, so the fetch loop waits for a call to end
// instead of fetching ahead; opened, it gives them back at once.
func TestAShutReserveKeepsItsSlotsTakenUntilOpened(t *testing.T) {
	r := newTestReserve(t, 8, 8) // 8 calling, a slot just taken
	if n := r.limit(queueState{4, 8, true}); n > 0 || !r.keep() {
		t.Fatalf("limit %d with every call busy: the slot taken should be kept by the reserve", n)
	}
	r.slots <- struct{}{} // the loop takes the next slot
	if !r.keep() {
		t.Fatal("the reserve's second slot was not kept")
	}
	if r.keep() {
		t.Fatal("a reserve of 2 kept a third slot")
	}
	if len(r.slots) != cap(r.slots) {
		t.Fatalf("slots taken %d, want all %d: the loop would not wait", len(r.slots), cap(r.slots))
	}
	<-r.slots             // a call ends
	r.slots <- struct{}{} // the loop takes its slot
	if n := r.limit(queueState{4, 8, true}); n != 1 {
		t.Fatalf("a call slot freed under a shut reserve: limit %d, want 1", n)
	}
	r.open()
	if r.shut != 0 || len(r.slots) != 8 {
		t.Fatalf("opened: %d still shut, %d slots taken, want 0 and 8 (7 jobs, the slot taken)", r.shut, len(r.slots))
	}
}
