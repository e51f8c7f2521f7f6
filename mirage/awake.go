package mirage

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Awake. A Mirage stopped (SIGSTOP, a frozen VM) for longer than the probe wait, or cut
// off from NATS, may come back to find that another Mirage started meanwhile: a starting
// Mirage waits that long for an answer (singleton.go). Its connection then hands it what
// the server kept for it: issues, and events delivered into its pull requests, among them
// events of intents the other one follows. Acted on before the probes settle which one
// serves, they would be accepted behind the other's back, or counted here and acknowledged
// away from the other, whose intents would end in timeout although their targets
// succeeded.
//
// So a Mirage notices such a gap (a pulse every pulseEvery finds more than the probe wait
// since the last one, or the connection came back) and probes again before it takes the
// next issue or event (awake). Once its own probe has come back to it, every probe other
// Mirages sent before it, on the same subscription, has been read; the others then have
// the probe wait to answer. After that it goes on, or it has stood down (decide) and
// takes nothing more: issues go unanswered, events are handed back (nak) at once for the
// Mirage that stays, and no report of its own is published.

// pulseEvery is how often a Mirage checks that it was not stopped.
const pulseEvery = 100 * time.Millisecond

// wakeCheck is a Mirage's view of whether it may have missed another one's start.
type wakeCheck struct {
	mu       sync.Mutex
	last     time.Time     // the last pulse, or the end of the last check
	stale    bool          // a gap was seen and not checked since
	checking chan struct{} // closed when the running check ends
	echo     string        // message_id of the check's probe until it comes back
	echoed   chan struct{}
}

// startPulse starts watching for gaps, from now. Called by claimDeployment.
func (m *Mirage) startPulse() {
	w := &m.claim.wake
	w.mu.Lock()
	w.last = time.Now()
	w.mu.Unlock()
	connected := m.nc.StatusChanged(nats.CONNECTED)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer m.nc.RemoveStatusListener(connected)
		t := time.NewTicker(max(min(pulseEvery, m.cfg.ProbeWait/4), time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-t.C:
				w.mu.Lock()
				now := time.Now()
				if now.Sub(w.last) > m.cfg.ProbeWait {
					w.stale = true
				}
				w.last = now
				w.mu.Unlock()
			case <-connected:
				w.mu.Lock()
				w.stale = true
				w.mu.Unlock()
			case <-m.stop:
				return
			}
		}
	}()
}

// wasAway reports whether this Mirage may just be back from a stop or a cut: a gap
// noticed and not checked yet, or one the pulse has not seen yet. What it reads now may
// have waited for it that long.
func (m *Mirage) wasAway() bool {
	w := &m.claim.wake
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stale || time.Since(w.last) > m.cfg.ProbeWait
}

// awake tells whether this Mirage may act on an issue or event now: after a gap it first
// waits for a new probe to settle (at most about twice the probe wait); false once it
// stood down or stops.
func (m *Mirage) awake() bool {
	w := &m.claim.wake
	for {
		w.mu.Lock()
		if time.Since(w.last) > m.cfg.ProbeWait {
			w.stale = true // the pulse was stopped too, and has not run yet
		}
		if !w.stale {
			w.mu.Unlock()
			return !m.gaveWay()
		}
		ch, start := w.checking, false
		if ch == nil {
			ch, start = make(chan struct{}), true
			w.checking = ch
		}
		w.mu.Unlock()
		if start && !m.spawn(func() { m.recheck(ch) }) {
			return false // stopping
		}
		select {
		case <-ch:
		case <-m.stop:
			return false
		}
	}
}

// recheck probes again after a gap and closes done once the answers had their time.
func (m *Mirage) recheck(done chan struct{}) {
	w := &m.claim.wake
	defer func() {
		w.mu.Lock()
		w.stale, w.last, w.checking, w.echo, w.echoed = false, time.Now(), nil, "", nil
		w.mu.Unlock()
		close(done)
	}()
	msg, id, ok := m.probeMsg()
	if !ok {
		return
	}
	echoed := make(chan struct{})
	w.mu.Lock()
	w.echo, w.echoed = id, echoed
	w.mu.Unlock()
	if err := m.nc.PublishMsg(msg); err != nil {
		return
	}
	m.log.Info("this Mirage was stopped or cut off for a while: probing again before it takes issues and events", "probe_wait", m.cfg.ProbeWait)
	select {
	case <-echoed:
	case <-time.After(2 * m.cfg.ProbeWait):
		// Not back (disconnected): nothing comes in either; a reconnect checks again.
		return
	case <-m.stop:
		return
	}
	select {
	case <-time.After(m.cfg.ProbeWait):
	case <-m.stop:
	}
}

// ownProbeBack notes that this Mirage's probe came back to it (onProbe).
func (m *Mirage) ownProbeBack(messageID string) {
	w := &m.claim.wake
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.echo != "" && w.echo == messageID {
		close(w.echoed)
		w.echo = ""
	}
}
