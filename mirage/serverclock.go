package mirage

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Whether an event is in time is judged by the time EDGE_EVT stored it, on the clock of
// the server that leads the stream; an intent's deadline, and every other time Mirage
// stamps (created_ms, deliver_by_ms, last_seen_ms, a register.ack from which Ghosts learn
// "Mirage's clock", its start time in mirage.probe), was on Mirage's own clock. With the
// two apart (a Mirage started with 'up --server' on another host, a cluster whose stream
// leader is elsewhere) by D: Mirage behind by more than the 500 ms grace counted every
// event of the intent's last D as late, so an intent shorter than D ended all 'timeout'
// with every command run; Mirage ahead held every cutoff D longer, and, ahead by more than
// a minute, its restart replayed EDGE_CMD and EDGE_EVT from after an open intent's first
// commands and events, and ended targets that had succeeded as 'timeout'. So Mirage learns
// the server's clock when it starts, from the stream info of EDGE_EVT (which says when its
// leader answered: within half the round trip), and, when its own is further off than
// serverClockTolerance, stamps every time on the server's clock instead: the server's time
// at that moment plus the time elapsed since on Mirage's monotonic clock, so that a step
// of Mirage's own clock afterwards moves nothing.
//
// It asks again every Config.ServerClockEvery: a host whose clock is off the server's is seldom
// disciplined by NTP, and its monotonic clock then runs at its crystal's rate, seconds a
// day off the server's (learnt once, a Mirage up for weeks drifted past the 500 ms grace);
// a clock that agreed at start may drift off later, and the server's may be stepped.

// serverClockTolerance is how far Mirage's clock may be off the server's (beyond the
// estimate's uncertainty) before Mirage uses the server's.
const serverClockTolerance = 100 * time.Millisecond

// DefaultServerClockEvery is how often a running Mirage asks the server's clock again.
const DefaultServerClockEvery = time.Minute

// serverClockAnnounceAt is how far Mirage's clock may move (beyond the estimate's
// uncertainty) before Mirage announces itself again: the Ghosts judge deliver_by_ms on
// Mirage's clock as they learnt it at registration, and a blocking step's lock covers a
// Ghost up to lingerGrace (2 s) off it. The announce makes them register again and learn
// it anew (each also catches up, as when a Mirage starts).
const serverClockAnnounceAt = time.Second

// clockRef is the server's clock at a moment of Mirage's own.
type clockRef struct {
	serverAt time.Time // the server's clock at the moment at
	at       time.Time // Mirage's own clock (base, with its monotonic reading) then
}

// serverClock is Mirage's clock as Config.Now, on the server's time once learnt off.
type serverClock struct {
	base func() time.Time
	evts jetstream.Stream
	log  *slog.Logger
	ref  atomic.Pointer[clockRef] // nil: base, which agreed with the server's
}

func (c *serverClock) now() time.Time {
	r := c.ref.Load()
	if r == nil {
		return c.base()
	}
	return r.serverAt.Add(c.base().Sub(r.at))
}

// learnServerClock asks evts for its info and returns the clock Mirage stamps times with:
// base when it agrees with the server's within serverClockTolerance, else base moved onto
// the server's clock. A server that does not say its time, or does not answer, leaves
// base (the start goes on: the info is asked again where it is needed).
func learnServerClock(ctx context.Context, evts jetstream.Stream, base func() time.Time, log *slog.Logger) *serverClock {
	c := &serverClock{base: base, evts: evts, log: log}
	c.learn(ctx)
	return c
}

// learn asks the server's clock and, when the clock in use (base, or base moved onto the
// server's) is further off it than serverClockTolerance beyond half the round trip, moves
// it onto the server's; it reports whether it moved it by more than serverClockAnnounceAt
// beyond that uncertainty. One goroutine at a time calls it; now may run meanwhile.
func (c *serverClock) learn(ctx context.Context) (far bool) {
	sent := c.base()
	info, err := c.evts.Info(ctx)
	received := c.base()
	if err != nil || info.TimeStamp.IsZero() {
		return false
	}
	rtt := max(received.Sub(sent), 0)
	mid := sent.Add(rtt / 2)
	own := mid.Round(0).Sub(info.TimeStamp) // Mirage's own clock minus the server's
	off := own                              // the clock in use minus the server's
	r := c.ref.Load()
	if r != nil {
		off = r.serverAt.Add(mid.Sub(r.at)).Sub(info.TimeStamp)
	}
	if off.Abs() <= rtt/2+serverClockTolerance {
		return false
	}
	c.ref.Store(&clockRef{serverAt: info.TimeStamp, at: mid})
	if r == nil {
		c.log.Warn("Mirage's clock is off the NATS server's, which stamps stored events: Mirage keeps intents' times on the server's clock; synchronise the clocks (NTP)",
			"clock_offset_ms", own.Milliseconds(), "within_ms", (rtt / 2).Milliseconds())
	} else {
		c.log.Warn("Mirage's clock, kept on the NATS server's, was off it again (drift, or the server's clock was stepped): set on the server's again; synchronise the clocks (NTP)",
			"moved_ms", -off.Milliseconds(), "clock_offset_ms", own.Milliseconds(), "within_ms", (rtt / 2).Milliseconds())
	}
	return off.Abs() > rtt/2+serverClockAnnounceAt
}

// keepServerClock asks the server's clock again every Config.ServerClockEvery until Mirage
// stops, and announces Mirage again when its clock moved far: the Ghosts register again
// and learn it anew.
func (m *Mirage) keepServerClock() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.ServerClockEvery)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(m.running, 5*time.Second)
			far := m.clock.learn(ctx)
			cancel()
			if far && !m.gaveWay() {
				m.log.Info("announcing Mirage again: its clock moved, the Ghosts learn it anew at their registration")
				m.announce()
			}
		}
	}
}
