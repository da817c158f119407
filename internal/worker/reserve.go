package worker

import "time"

// reserve is the part of a fetch loop's slots that fetches jobs ahead of a free call
// slot (reserveOf), used only while the backlog is long. A job fetched ahead waits in
// its worker for one of the worker's calls to end. While the run's queue holds at least
// as many jobs as the other workers have call slots, that costs nothing: every slot
// that frees elsewhere finds a job. Near a run's end it does: a worker holds the last
// jobs while another worker's slots stand idle, and the run waits up to a call's length
// more for them. So a fetch takes jobs beyond its worker's free call slots only as far
// as the other workers' call slots' worth stay queued after it (limit), and the last
// jobs go to whichever call slot frees first, in any worker. A worker alone holds jobs
// ahead to the last.
//
// A reserve that may not be used is shut: its slots are kept taken, each by a token of
// its own in the fetch loop's slot channel (which holds one token per job held, plus
// these), so the loop waits for a call slot instead of spinning. A reserve that is full
// of jobs shuts as they move into call slots: each slot freed is kept by the reserve
// until all of it is shut. A reserve is used by one goroutine (its fetch loop).
type reserve struct {
	slots chan struct{} // the fetch loop's slots: call slots and reserve
	calls int           // the call slots (the rest of slots is the reserve)
	shut  int           // reserve slots kept taken (a token each in slots)
}

// open gives the slots kept taken back to the fetch loop. It never waits: slots holds
// a token for each of them.
func (r *reserve) open() {
	for ; r.shut > 0; r.shut-- {
		<-r.slots
	}
}

// keep reports whether a slot just taken by the fetch loop is kept by a reserve that is
// not yet all shut, in which case the loop fetches nothing for it.
func (r *reserve) keep() bool {
	if r.shut >= cap(r.slots)-r.calls {
		return false
	}
	r.shut++
	return true
}

// queueState is what a fetch loop knows of its runs' queue when it decides on jobs
// ahead: backlog jobs queued (-1: not known yet, as before a run's first fetch), read
// within backlogFresh (fresh), and others, the call slots of the fleet's other workers
// (0: the worker is alone). A backlog read earlier was read before the other workers'
// last fetches.
type queueState struct {
	backlog, others int
	fresh           bool
}

// backlogFresh is how long a backlog read by a fetch stands for the queue. A busy
// fleet fetches every few milliseconds; calls seconds long leave the reading of a
// worker's last fetch seconds old.
const backlogFresh = 100 * time.Millisecond

// queueState reads what the fetch loop knows of runs' queue from their pullers.
func (d *deployment) queueState(pulls *pullers, runs []*runConsumer) queueState {
	backlog, read := pulls.backlog(runs)
	if backlog < 0 {
		return queueState{backlog: -1}
	}
	return queueState{backlog: backlog, others: d.otherSlots(), fresh: time.Since(read) <= backlogFresh}
}

// unbounded reports whether a fetch may take all it has slots for: the worker is alone,
// or the backlog is not known yet.
func (q queueState) unbounded() bool { return q.backlog < 0 || q.others == 0 }

// opens reports whether the reserve may be used at all, by limit's rule.
func (q queueState) opens() bool { return q.unbounded() || q.fresh && q.backlog > q.others }

// limit is how many jobs a fetch may take, the fetch loop holding a slot just taken:
// all it has slots for when unbounded; else its free call slots, and more only as far
// as the other workers' call slots' worth stay queued after the fetch, by a fresh
// backlog. With a stale one, a worker whose calls are long fetches for its free call
// slots first and decides on jobs ahead by what that fetch reads.
func (r *reserve) limit(q queueState) int {
	if q.unbounded() {
		return cap(r.slots)
	}
	free := r.calls - (len(r.slots) - 1 - r.shut) // a job released meanwhile: one more free
	if !q.fresh {
		return free
	}
	return min(max(free, q.backlog-q.others), cap(r.slots))
}

// otherSlots is the call slots of the deployment's other workers, counted as the
// members this worker shares the deployment's rate with (its throttle's share of the
// grid, 1/members) times this worker's call slots. A pool's members are throttled one by
// one: it counts as alone.
func (d *deployment) otherSlots() int {
	if d.ctrl == nil {
		return 0
	}
	share := d.ctrl.Share()
	if !(share > 0) || share >= 1 {
		return 0
	}
	return int(float64(d.slots)/share+0.5) - d.slots
}
