package mirage

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// readMark is how far the events consumer has read EDGE_EVT: every message up to seq has
// been through onEvent. Event ingest moves it with one atomic operation, and wakes the
// waiters only once it reaches the lowest sequence one of them waits for. Of the waiters,
// one at a time (the holder of turn) asks the consumer's ack floor every 250 ms, for all.
type readMark struct {
	seq atomic.Uint64
	low atomic.Uint64 // the lowest sequence waited for; math.MaxUint64 when none
	mu  sync.Mutex
	// waited counts the waiters by the sequence they wait for.
	waited  map[uint64]int
	wake    chan struct{} // closed and replaced when seq reaches low
	turn    chan struct{} // holds the token of the waiter that polls the floor
	lastErr error         // the last poll's error, for the waiters that give up
}

// floorEvery is how often the waiters' poller asks the consumer's ack floor.
const floorEvery = 250 * time.Millisecond

func newReadMark() *readMark {
	r := &readMark{wake: make(chan struct{}), turn: make(chan struct{}, 1), waited: map[uint64]int{}}
	r.low.Store(math.MaxUint64)
	r.turn <- struct{}{}
	return r
}

// advance records that the consumer has read through seq.
func (r *readMark) advance(seq uint64) {
	for {
		cur := r.seq.Load()
		if seq <= cur {
			return
		}
		if r.seq.CompareAndSwap(cur, seq) {
			break
		}
	}
	if seq < r.low.Load() {
		return
	}
	r.mu.Lock()
	close(r.wake)
	r.wake = make(chan struct{})
	r.mu.Unlock()
}

// enter and leave count a waiter for seq in waited and low.
func (r *readMark) enter(seq uint64) {
	r.mu.Lock()
	r.waited[seq]++
	if seq < r.low.Load() {
		r.low.Store(seq)
	}
	r.mu.Unlock()
}

func (r *readMark) leave(seq uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waited[seq]--; r.waited[seq] > 0 {
		return
	}
	delete(r.waited, seq)
	low := uint64(math.MaxUint64)
	for s := range r.waited { // few: waiters share eventsMark's answers
		low = min(low, s)
	}
	r.low.Store(low)
}

// wait returns true once the mark reaches seq, false when ctx ends first. A message
// acknowledged before this Mirage started, or delivered again out of order, does not come
// through onEvent: the waiter holding turn asks floor (the consumer's ack floor on the
// server) every floorEvery and advances the mark to it, then hands turn on when it leaves.
func (r *readMark) wait(ctx context.Context, seq uint64, floor func(context.Context) (uint64, error)) (bool, error) {
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
			f, err := floor(ctx)
			r.mu.Lock()
			r.lastErr = err
			r.mu.Unlock()
			if err == nil {
				r.advance(f)
			}
		}
	}
}
