package mirage

import (
	"context"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// When an event is in time. An event counts for its intent iff EDGE_EVT stored it no
// later than the intent's cutoff: its deadline + resultGrace, judged by the stream's own
// timestamp (the message metadata, the server's clock). The live path (onEvent) and
// recovery (replay) both apply that rule, so a history gets one verdict whichever Mirage
// reads it. The live path must not give up on an event stored in time but not read yet
// (the consumer lagging behind a burst, or a delivery lost on its way while later ones
// came): at the cutoff, Mirage notes the last sequence EDGE_EVT held (eventsMark) and ends
// the intent's pending units only once its events consumer has read every message up to
// it (readMark), for at most catchUpWait, or lostDeliveryWait past the moment a lost
// delivery was seen: a later message read past it, or the consumer's info saying it was
// delivered while Mirage had not read it.

// storeSettle is how long past an intent's cutoff, by the server's clock, Mirage notes
// EDGE_EVT's last sequence: on a cluster a message gets its timestamp before it is stored
// on the stream leader, so one stamped just before the cutoff may not be in the stream's
// state at the cutoff itself.
const storeSettle = 250 * time.Millisecond

// catchUpWait bounds how long an intent's expiry waits for the events consumer to read
// what EDGE_EVT held at its cutoff. Past it the pending units end timeout anyway, and an
// event stored in time but read later is answered as late (1900).
const catchUpWait = 10 * time.Second

// eventsAckWait is the ack wait of the events consumer: a message delivered to Mirage and
// not acknowledged (lost on its way, across a reconnect) is delivered again after it.
const eventsAckWait = 30 * time.Second

// lostDeliveryWait is how long past the moment Mirage saw a hole in what it read (a later
// message came, an earlier one did not; or the consumer said it delivered a message Mirage
// has not read: its delivery was lost) an expiry waiting for the hole waits, past
// catchUpWait: until the consumer delivers the lost message again, with room for a
// consumer busy with others then.
const lostDeliveryWait = eventsAckWait + 5*time.Second

// expiryWaits are catchUpWait and lostDeliveryWait, which tests shorten.
type expiryWaits struct {
	catchUp, lost time.Duration
}

// cutoff is when an intent stops taking events: EDGE_EVT must have stored a terminal
// event by then for it to count.
func (li *liveIntent) cutoff() time.Time {
	return time.UnixMilli(li.rec.DeadlineMS).Add(resultGrace)
}

// storedLate reports whether an event of li stored in EDGE_EVT at stored (zero: unknown)
// came after li's cutoff and is not the result li already holds (a re-sent copy of a
// counted event stays a duplicate).
func (li *liveIntent) storedLate(ev *bus.Event, stored time.Time) bool {
	if stored.IsZero() || !stored.After(li.cutoff()) {
		return false
	}
	i, ok := li.index[ev.CommandID]
	return !ok || li.results[i].EventID != ev.EventID || li.results[i].GhostID != ev.GhostID
}

// awaitsEvents reports whether a pending unit of li was dispatched: only then can an
// event still on its way change what expire decides.
func (li *liveIntent) awaitsEvents() bool {
	for i, r := range li.results {
		if r.Outcome == bus.OutcomePending && (i < li.next || li.wasSent(i)) {
			return true
		}
	}
	return false
}

// expireAtCutoff ends the pending units of intent id once Mirage has read every event
// EDGE_EVT stored by its cutoff (see above), or its wait for them ended. When Mirage stops
// meanwhile it does nothing: the next Mirage follows the intent and expires it.
func (m *Mirage) expireAtCutoff(id string) {
	if !m.awake() {
		return // stood down: the Mirage that stays follows the intent
	}
	m.mu.Lock()
	li, ok := m.live[id]
	var cutoff time.Time
	wait := false
	if ok {
		cutoff = li.cutoff()
		// A replay that read past the cutoff (a restart after the deadline) has applied
		// every event stored by then.
		wait = li.awaitsEvents() && !li.replayedAt.After(cutoff)
	}
	m.mu.Unlock()
	if !ok {
		return
	}
	if wait {
		waited := time.Now()
		caughtUp, err := m.readThrough(cutoff)
		select {
		case <-m.stop:
			return
		default:
		}
		if !caughtUp {
			m.log.Warn("events consumer not caught up at an intent's deadline: its pending targets end timeout; events stored in time but read later are answered as late (1900)", "intent_id", id, "waited", time.Since(waited).Round(time.Millisecond), "err", err)
		}
	}
	m.mu.Lock()
	cur, ok := m.live[id]
	if ok {
		cur.expire()
	}
	m.mu.Unlock()
	if ok {
		m.progress(id)
	}
}

// readThrough waits until the events consumer has read everything EDGE_EVT stored by
// cutoff: for at most catchUpWait, and while a delivery lost below that (a hole in what
// was read) is still to come again, until lostDeliveryWait past when the hole was seen.
// Called without m.mu held.
func (m *Mirage) readThrough(cutoff time.Time) (bool, error) {
	until := time.Now().Add(m.waits.catchUp)
	ctx, cancel := context.WithDeadline(m.running, until)
	mark, err := m.eventsMark(ctx, cutoff)
	cancel()
	if err != nil {
		return false, err
	}
	// Held across the rounds: the poller's note that the consumer delivered mark
	// (holeBelow) lasts while this waits.
	m.read.enter(mark)
	defer m.read.leave(mark)
	for {
		ok, err := m.readUntil(until, mark)
		if ok || m.running.Err() != nil {
			return ok, err
		}
		// The lost message was delivered before the later one that showed the hole was
		// read, or the poll that showed it delivered: the consumer delivers it again
		// within its ack wait of that.
		seen, lost := m.read.holeBelow(mark)
		if !lost || !time.Now().Before(seen.Add(m.waits.lost)) {
			return false, err
		}
		until = seen.Add(m.waits.lost)
	}
}

// readUntil waits until the events consumer has read every message up to mark, or until.
func (m *Mirage) readUntil(until time.Time, mark uint64) (bool, error) {
	ctx, cancel := context.WithDeadline(m.running, until)
	defer cancel()
	var stuck uint64 // the ack floor below mark, and since when
	var since time.Time
	return m.read.wait(ctx, mark, func(ctx context.Context) (uint64, uint64, error) {
		cons, err := m.js.Consumer(ctx, bus.StreamEvents, EventsConsumer)
		if err != nil {
			return 0, 0, err
		}
		info := cons.CachedInfo()
		floor := info.AckFloor.Stream
		switch {
		case floor >= mark || info.Delivered.Stream <= floor:
		case floor != stuck || since.IsZero():
			stuck, since = floor, time.Now()
		case time.Since(since) >= time.Second:
			// The consumer delivered past a message it has not acknowledged for a second:
			// one that reads as a status is never read, nor delivered again (unreadable.go).
			m.kickSweep()
		}
		return floor, info.Delivered.Stream, nil
	})
}

// eventsMark returns a sequence of EDGE_EVT at or past every message it stored by
// cutoff: its last sequence once the server's clock is storeSettle past cutoff. The
// answer is kept and serves every intent whose cutoff it covers, so that many intents
// expiring together cost one request. A failed request (a stream leader being elected,
// the JetStream API not answering: 503, no responders, just when the consumer is likely
// to lag) is made again, 100 ms doubling to 1 s, until ctx ends; the intents expiring
// meanwhile wait for that answer, which serves them too.
func (m *Mirage) eventsMark(ctx context.Context, cutoff time.Time) (uint64, error) {
	m.markMu.Lock()
	defer m.markMu.Unlock()
	want := cutoff.Add(storeSettle)
	retry := 100 * time.Millisecond
	for {
		if !m.markAt.IsZero() && !m.markAt.Before(want) {
			return m.markSeq, nil
		}
		info, err := m.evts.Info(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
				return 0, err
			case <-time.After(retry):
			}
			retry = min(2*retry, time.Second)
			continue
		}
		at := info.TimeStamp
		if at.IsZero() { // a server that does not say when: Mirage's clock
			at = m.cfg.Now() // the clock cutoff is on
		}
		m.markAt, m.markSeq = at, info.State.LastSeq
		if d := want.Sub(at); d > 0 { // the server's clock is behind Mirage's
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(d):
			}
		}
	}
}
