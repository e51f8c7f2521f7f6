package mirage

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// A blocking step's lock outlives a unit that Mirage timed out. Such a unit's command may
// still be running, or not started yet: a Ghost starts a command as late as its
// deliver_by and runs it for up to its timeout from then, past the intent's deadline.
// Freeing the lock at the deadline would let the next blocking step on the same
// ghost::seed run beside it, so the lock lingers until the command's terminal event comes
// or its latest possible end (deliver_by + timeout + lingerGrace) passes. Lingering locks
// live in memory only: a restarted Mirage frees them.

// lingerGrace covers a Ghost clock behind Mirage's and the event's way back.
const lingerGrace = 2 * time.Second

// lockLinger is a lock kept for one command that may still run.
type lockLinger struct {
	key, intentID, commandID, ghostID string
	until                             time.Time
	timer                             *time.Timer
}

// lingers holds the lingering locks; guarded by Mirage.mu except n, which lets event
// ingest skip the lock when none linger.
type lingers struct {
	byKey     map[string]*lockLinger
	byCommand map[string]*lockLinger
	n         atomic.Int32
}

func newLingers() *lingers {
	return &lingers{byKey: map[string]*lockLinger{}, byCommand: map[string]*lockLinger{}}
}

// releaseLocks frees the locks li holds for its locked step, except those of units Mirage
// timed out, which linger. It reports whether it freed any (waiting intents may go on).
// Called with m.mu held.
func (m *Mirage) releaseLocks(li *liveIntent) bool {
	if len(li.locks) == 0 {
		return false
	}
	st := li.rec.Steps[li.lockStep]
	mayRun := map[string]bus.TargetResult{}
	for j, g := range st.Targets {
		// Timeout is only ever Mirage's verdict: a Ghost's own timeout event is an error.
		// A command whose terminal event came after that verdict has ended: no linger.
		if r := li.results[st.First+j]; r.Outcome == bus.OutcomeTimeout && !li.endedLate[st.First+j] {
			mayRun[lockKey(g, st.Objective.SeedSelector)] = r
		}
	}
	deliverBy := li.rec.DeliverByMS
	if deliverBy == 0 {
		deliverBy = li.rec.DeadlineMS
	}
	until := time.UnixMilli(deliverBy).Add(time.Duration(li.rec.Issue.TimeoutMS)*time.Millisecond + lingerGrace)
	now := m.cfg.Now()
	freed := false
	for _, k := range li.locks {
		if m.locks[k] != li.rec.IntentID {
			continue
		}
		if r, ok := mayRun[k]; ok && now.Before(until) {
			m.linger(&lockLinger{key: k, intentID: li.rec.IntentID, commandID: r.CommandID, ghostID: r.GhostID, until: until}, until.Sub(now))
			continue
		}
		delete(m.locks, k)
		freed = true
	}
	li.locks = nil
	return freed
}

// linger keeps h's lock until h.until, or until its command's terminal event.
// Called with m.mu held.
func (m *Mirage) linger(h *lockLinger, d time.Duration) {
	if old := m.lingers.byKey[h.key]; old != nil {
		m.dropLinger(old)
	}
	m.lingers.byKey[h.key] = h
	m.lingers.byCommand[h.commandID] = h
	m.lingers.n.Add(1)
	m.log.Info("lock kept past the intent's end: its command may still run", "lock", h.key, "intent_id", h.intentID, "command_id", h.commandID, "until", h.until.UTC().Format(time.RFC3339Nano))
	h.timer = time.AfterFunc(d, func() {
		m.spawn(func() { // not once Mirage stops: locks live in memory only
			m.mu.Lock()
			freed := m.lingers.byKey[h.key] == h
			if freed {
				m.dropLinger(h)
			}
			m.mu.Unlock()
			if freed {
				m.wakeWaiters()
			}
		})
	})
}

// dropLinger frees h's lock. Called with m.mu held.
func (m *Mirage) dropLinger(h *lockLinger) {
	if h.timer != nil {
		h.timer.Stop()
	}
	delete(m.lingers.byKey, h.key)
	if m.lingers.byCommand[h.commandID] == h {
		delete(m.lingers.byCommand, h.commandID)
	}
	if m.locks[h.key] == h.intentID {
		delete(m.locks, h.key)
	}
	m.lingers.n.Add(-1)
}

// commandEnded frees the lock lingering for ev's command once its terminal event (the
// command's own event_id, from its Ghost) has come, and returns it (nil: none lingered).
// Called with m.mu held, by ingest in the same hold as it applies ev: a linger made later
// sees the event in its intent's results (releaseLocks), one made earlier is freed here.
func (m *Mirage) commandEnded(ev *bus.Event) *lockLinger {
	if m.lingers.n.Load() == 0 {
		return nil
	}
	h := m.lingers.byCommand[ev.CommandID]
	if h == nil || h.ghostID != ev.GhostID || ev.EventID != bus.EventID(ev.GhostID, ev.CommandID) {
		return nil
	}
	m.dropLinger(h)
	return h
}

// lockReason says why an intent waits for key, held by holder. Called with m.mu held.
func (m *Mirage) lockReason(key, holder string) string {
	if h := m.lingers.byKey[key]; h != nil && h.intentID == holder {
		return fmt.Sprintf("waiting for lock %s: command %s of intent %s timed out and may still run there (until its event, at most until %s)", key, h.commandID, holder, h.until.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("waiting for lock %s held by intent %s", key, holder)
}

// stopLingers stops the timers of lingering locks (Close).
func (m *Mirage) stopLingers() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, h := range m.lingers.byKey {
		h.timer.Stop()
	}
}
