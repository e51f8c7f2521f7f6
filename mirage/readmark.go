package mirage

import (
	"context"
	"math"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// readMark is how far the events consumer has read EDGE_EVT: every message up to seq has
// been through onEvent, was read by recover's replay or by an earlier Mirage, or is not in
// the stream. It moves over what was read without a gap only: a message the consumer
// delivered but that never reached onEvent (lost across a reconnect, dropped from a full
// client buffer) while later ones did, holds it until the consumer delivers that message
// again, after its ack wait. The messages read past such a hole are kept as runs. Event
// ingest moves the mark under a lock no one else holds for long, and wakes the waiters only
// once it reaches the lowest sequence one of them waits for. Of the waiters, one at a time
// (the holder of turn) asks the consumer's info every 250 ms, for all: its ack floor moves
// the mark past sequences the stream does not hold (deleted, or removed by its limits),
// which no delivery fills; its last delivered sequence, at or past a waited-for sequence
// the mark is below, shows a hole nothing later read does (the lost delivery was the
// newest message), and when it was seen.
type readMark struct {
	seq atomic.Uint64
	low atomic.Uint64 // the lowest sequence waited for; math.MaxUint64 when none
	// runs, under runMu, are the sequences read past seq+1: in order, apart from each
	// other. Every write of seq holds runMu.
	runMu sync.Mutex
	runs  []readRun
	mu    sync.Mutex
	// waited holds the waiters by the sequence they wait for.
	waited  map[uint64]*waiting
	wake    chan struct{} // closed and replaced when seq reaches low
	turn    chan struct{} // holds the token of the waiter that polls the floor
	lastErr error         // the last poll's error, for the waiters that give up
}

// readRun is a run of sequences read, lo to hi, past a hole: since is when the hole below
// it was seen (its first message read), by which the messages in the hole were delivered.
type readRun struct {
	lo, hi uint64
	since  time.Time
}

// waiting is what readMark keeps of a sequence waited for: by how many, and when the
// floor poller first saw the consumer had delivered it while the mark was below it (zero:
// not seen). It lives as long as a waiter holds it (enter to leave): no more of them than
// of the waiters.
type waiting struct {
	n         int
	delivered time.Time
}

// maxReadRuns bounds the holes kept: past it the lowest counts as read (an expiry no
// longer waits for it), so that holes nothing fills cost no more than this.
const maxReadRuns = 4096

// floorEvery is how often the waiters' poller asks the consumer's ack floor.
const floorEvery = 250 * time.Millisecond

func newReadMark() *readMark {
	r := &readMark{wake: make(chan struct{}), turn: make(chan struct{}, 1), waited: map[uint64]*waiting{}}
	r.low.Store(math.MaxUint64)
	r.turn <- struct{}{}
	return r
}

// one records that the consumer has read the message at seq.
func (r *readMark) one(seq uint64) {
	r.runMu.Lock()
	cur := r.seq.Load()
	next := cur
	switch {
	case seq <= cur:
	case seq == cur+1 && len(r.runs) == 0: // in order, the usual case
		next = seq
	default:
		r.addRun(seq)
		if len(r.runs) > maxReadRuns {
			next = r.runs[0].hi
			r.runs = append(r.runs[:0], r.runs[1:]...)
		}
		next = r.absorb(next)
	}
	if next != cur {
		r.seq.Store(next)
	}
	r.runMu.Unlock()
	if next > cur {
		r.moved(next)
	}
}

// advance records that every message up to seq is read (or not in the stream).
func (r *readMark) advance(seq uint64) {
	r.runMu.Lock()
	cur := r.seq.Load()
	next := cur
	if seq > cur {
		i := 0
		for i < len(r.runs) && r.runs[i].hi <= seq {
			i++
		}
		r.runs = append(r.runs[:0], r.runs[i:]...)
		next = r.absorb(seq)
		r.seq.Store(next)
	}
	r.runMu.Unlock()
	if next > cur {
		r.moved(next)
	}
}

// addRun adds seq, past seq+1 of the mark, to the runs. Called with runMu held.
func (r *readMark) addRun(seq uint64) {
	n := len(r.runs)
	if n > 0 && r.runs[n-1].hi+1 == seq { // read on past a hole
		r.runs[n-1].hi = seq
		return
	}
	// The first run that seq is in, extends upwards, or lies below.
	i := sort.Search(n, func(i int) bool { return r.runs[i].hi+1 >= seq })
	switch {
	case i < n && r.runs[i].lo <= seq:
		if seq == r.runs[i].hi+1 {
			r.runs[i].hi = seq
			if i+1 < n && r.runs[i+1].lo == seq+1 { // the hole between them is filled
				r.runs[i].hi = r.runs[i+1].hi
				r.runs = append(r.runs[:i+1], r.runs[i+2:]...)
			}
		}
	case i < n && r.runs[i].lo == seq+1:
		r.runs[i].lo = seq
	default:
		r.runs = slices.Insert(r.runs, i, readRun{lo: seq, hi: seq, since: time.Now()})
	}
}

// absorb moves floor over the first run when nothing lies between them, and returns it.
// Called with runMu held.
func (r *readMark) absorb(floor uint64) uint64 {
	if len(r.runs) > 0 && r.runs[0].lo <= floor+1 {
		floor = max(floor, r.runs[0].hi)
		r.runs = append(r.runs[:0], r.runs[1:]...)
	}
	return floor
}

// moved wakes the waiters once the mark, now seq, reaches the lowest one waited for.
func (r *readMark) moved(seq uint64) {
	if seq < r.low.Load() {
		return
	}
	r.mu.Lock()
	close(r.wake)
	r.wake = make(chan struct{})
	r.mu.Unlock()
}

// holeBelow reports whether a hole holds the mark below seq (a message up to seq not read
// while a later one was, or while the consumer's info said it delivered up to seq: its
// delivery was lost, or the stream does not hold it), and the latest time such a hole was
// seen. The second kind is known only for a sequence a waiter holds (enter), once the
// floor poller saw it delivered.
func (r *readMark) holeBelow(seq uint64) (time.Time, bool) {
	var seen time.Time
	hole := false
	r.mu.Lock()
	if w := r.waited[seq]; w != nil && !w.delivered.IsZero() && r.seq.Load() < seq {
		seen, hole = w.delivered, true
	}
	r.mu.Unlock()
	r.runMu.Lock()
	defer r.runMu.Unlock()
	below := r.seq.Load() // the hole before each run starts past below
	for _, run := range r.runs {
		if below+1 > seq {
			break
		}
		hole = true
		if run.since.After(seen) {
			seen = run.since
		}
		below = run.hi
	}
	return seen, hole
}

// noteDelivered records that the consumer has delivered every message up to seq (its
// info's last delivered sequence): a waited-for sequence up to it that the mark is below
// gets its hole seen now, unless it was before.
func (r *readMark) noteDelivered(seq uint64) {
	mark := r.seq.Load()
	if seq <= mark {
		return
	}
	now := time.Now()
	r.mu.Lock()
	for s, w := range r.waited { // few: waiters share eventsMark's answers
		if s > mark && s <= seq && w.delivered.IsZero() {
			w.delivered = now
		}
	}
	r.mu.Unlock()
}

// enter and leave count a waiter for seq in waited and low. A caller that waits for seq
// in rounds (readThrough) holds it across them, so that what the poller noted of it lasts.
func (r *readMark) enter(seq uint64) {
	r.mu.Lock()
	w := r.waited[seq]
	if w == nil {
		w = &waiting{}
		r.waited[seq] = w
	}
	w.n++
	if seq < r.low.Load() {
		r.low.Store(seq)
	}
	r.mu.Unlock()
}

func (r *readMark) leave(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w := r.waited[seq]; w.n > 1 {
		w.n--
		return
	}
	delete(r.waited, seq)
	low := uint64(math.MaxUint64)
	for s := range r.waited { // few: waiters share eventsMark's answers
		low = min(low, s)
	}
	r.low.Store(low)
}

// wait returns true once the mark reaches seq, false when ctx ends first. A hole that no
// delivery fills (a message acknowledged before this Mirage started, or not in the stream)
// is passed by the consumer's ack floor on the server: the waiter holding turn asks info
// (the consumer's ack floor and last delivered sequence) every floorEvery, advances the
// mark to the floor and notes the delivered sequence (noteDelivered), then hands turn on
// when it leaves.
func (r *readMark) wait(ctx context.Context, seq uint64, info func(context.Context) (floor, delivered uint64, err error)) (bool, error) {
	r.enter(seq)
	defer r.leave(seq)
	turn := r.turn
	var tick <-chan time.Time
	defer func() {
		if turn == nil { // held: handed on to another waiter
			r.turn <- struct{}{}
		}
	}()
	for {
		r.mu.Lock()
		wake := r.wake
		r.mu.Unlock()
		if r.seq.Load() >= seq {
			return true, nil
		}
		select {
		case <-ctx.Done():
			r.mu.Lock()
			err := r.lastErr
			r.mu.Unlock()
			return false, err
		case <-wake:
		case <-turn:
			turn = nil
			ticker := time.NewTicker(floorEvery)
			defer ticker.Stop()
			tick = ticker.C
		case <-tick:
			f, d, err := info(ctx)
			r.mu.Lock()
			r.lastErr = err
			r.mu.Unlock()
			if err == nil {
				r.advance(f)
				r.noteDelivered(d)
			}
		}
	}
}
