package mirage

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Events EDGE_EVT removed before Mirage read them. EDGE_EVT is capped (events_max_mb,
// discard old) and ages events out after 7 days: a Mirage that lags behind the stream by
// more than its cap (cut off from NATS, stopped, slow under a flood) finds the oldest of
// the events it has not read gone. Their Ghosts hold them, unacknowledged, but a re-send
// under the event_id (a Mirage that shows itself) is dropped by the stream as a duplicate
// for 15 minutes after the first copy was stored, though the stream no longer holds that
// copy: the targets would end timeout although they answered.
//
// The events consumer delivers first deliveries in stream order, so a first delivery past
// the last one plus one is a hole: messages deleted (a sweep of unreadable ones, by hand)
// or removed by the stream's limits. When the stream's first sequence is past the hole's
// start, its limits removed unread events: Mirage announces itself with events_lost, at
// most once per lostAnnounceEvery (one asked for meanwhile goes out at its end), and the
// Ghosts store their unacknowledged events again under a Nats-Msg-Id of their own
// (ghost: restore), each counted once by its event_id.

// lostAnnounceEvery bounds the announces with events_lost.
const lostAnnounceEvery = 5 * time.Second

// eventLoss follows the events consumer's first deliveries (delivered, written by the
// consumer's callback only, which runs one message at a time) and the announces of a loss.
type eventLoss struct {
	delivered atomic.Uint64 // the stream sequence of the last first delivery
	mu        sync.Mutex
	sentAt    time.Time // the last announce with events_lost
	due       bool      // one is scheduled for the end of lostAnnounceEvery
}

// noteDelivered records the first delivery of the message at seq, and looks into a hole
// before it.
func (m *Mirage) noteDelivered(seq uint64) {
	prev := m.loss.delivered.Load()
	if seq <= prev {
		return
	}
	m.loss.delivered.Store(seq)
	if seq > prev+1 {
		m.spawn(func() { m.checkLoss(prev+1, seq) })
	}
}

// checkLoss asks EDGE_EVT whether its limits removed messages of the hole from..to-1 (its
// first sequence is past from), and announces the loss if so.
func (m *Mirage) checkLoss(from, to uint64) {
	ctx, cancel := context.WithTimeout(m.running, 10*time.Second)
	defer cancel()
	info, err := m.evts.Info(ctx)
	if err != nil {
		// Not known: announced all the same, the cost of which is one store of the
		// unacknowledged events, each counted once.
		m.log.Warn("events consumer skipped messages and EDGE_EVT cannot be asked why; asking Ghosts to store their unacknowledged events again", "from_seq", from, "to_seq", to-1, "err", err)
		m.announceLost()
		return
	}
	if info.State.FirstSeq <= from {
		return // deleted ones (swept, by hand), not removed by the limits
	}
	m.log.Warn("EDGE_EVT removed events before Mirage read them (its byte cap, events_max_mb, or age); asking Ghosts to store their unacknowledged events again",
		"from_seq", from, "first_seq", info.State.FirstSeq, "lost_at_most", min(info.State.FirstSeq, to)-from)
	m.announceLost()
}

// announceLost publishes an announce with events_lost, at most once per
// lostAnnounceEvery: one asked for sooner goes out at the end of that time.
func (m *Mirage) announceLost() {
	m.loss.mu.Lock()
	defer m.loss.mu.Unlock()
	if wait := time.Until(m.loss.sentAt.Add(lostAnnounceEvery)); wait > 0 {
		if !m.loss.due {
			m.loss.due = true
			time.AfterFunc(wait, func() {
				m.spawn(func() {
					m.loss.mu.Lock()
					m.loss.due = false
					m.loss.mu.Unlock()
					m.announceLost()
				})
			})
		}
		return
	}
	m.loss.sentAt = time.Now()
	ann := bus.Announce{Header: bus.NewHeader(bus.TypeAnnounce, "", m.cfg.Now()), MirageID: m.cfg.ID, EventsLost: true}
	if data, err := bus.Encode(&ann); err == nil {
		_ = m.nc.Publish(subjects.Announce, data)
	}
}
