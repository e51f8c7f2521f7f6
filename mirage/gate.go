package mirage

import (
	"sync"
	"time"
)

// ghostGate bounds one kind of Ghost request (replay, seed read): one request of a Ghost
// served at a time, and at least every between two of its requests, counted from the
// admission of the last (fromEnd false) or from its end (fromEnd true: a long read does
// not make the next one free). A refused request costs Mirage a busy answer, not
// JetStream calls, and other Ghosts' requests are not held up. It remembers at most max
// Ghosts: beyond that, after pruning, a request is refused.
type ghostGate struct {
	every   time.Duration
	fromEnd bool
	max     int

	mu     sync.Mutex
	ghosts map[string]*ghostTurn
	pruned time.Time
}

// ghostTurn is a Ghost's last request: since is when the interval runs from.
type ghostTurn struct {
	since   time.Time
	serving bool
}

// gateMax bounds the Ghosts a gate remembers.
const gateMax = 100_000

func newGhostGate(every time.Duration, fromEnd bool) *ghostGate {
	return &ghostGate{every: every, fromEnd: fromEnd, max: gateMax, ghosts: map[string]*ghostTurn{}}
}

// enter admits a request of Ghost id at now, or refuses it; an admitted request is
// followed by leave.
func (g *ghostGate) enter(id string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Sub(g.pruned) >= time.Minute || (len(g.ghosts) >= g.max && now.Sub(g.pruned) >= g.every) {
		g.prune(now)
	}
	t, ok := g.ghosts[id]
	switch {
	case ok && (t.serving || now.Sub(t.since) < g.every):
		return false
	case !ok && len(g.ghosts) >= g.max:
		return false
	case !ok:
		t = &ghostTurn{}
		g.ghosts[id] = t
	}
	t.serving = true
	if !g.fromEnd {
		t.since = now
	}
	return true
}

// leave ends the admitted request of Ghost id at now.
func (g *ghostGate) leave(id string, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if t, ok := g.ghosts[id]; ok {
		t.serving = false
		if g.fromEnd {
			t.since = now
		}
	}
}

// prune forgets the Ghosts whose turn no longer bounds anything.
func (g *ghostGate) prune(now time.Time) {
	g.pruned = now
	for id, t := range g.ghosts {
		if !t.serving && now.Sub(t.since) >= g.every {
			delete(g.ghosts, id)
		}
	}
}

// serveGated serves a request of Ghost id admitted by gate at arrived: in its own
// goroutine, once it holds one of slots, waited for until arrived+maxWait (past that the
// Ghost has stopped waiting: the request is dropped), then leaves the gate.
func (m *Mirage) serveGated(gate *ghostGate, slots chan struct{}, id string, arrived time.Time, maxWait time.Duration, serve func()) {
	if !m.spawn(func() {
		defer func() { gate.leave(id, time.Now()) }()
		wait := time.NewTimer(maxWait - time.Since(arrived))
		defer wait.Stop()
		select {
		case slots <- struct{}{}:
		case <-wait.C:
			return
		case <-m.stop:
			return
		}
		defer func() { <-slots }()
		serve()
	}) {
		gate.leave(id, time.Now())
	}
}
