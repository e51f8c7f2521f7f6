package mirage

import (
	"context"
	"log/slog"
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

// serverClockTolerance is how far Mirage's clock may be off the server's (beyond the
// estimate's uncertainty) before Mirage uses the server's.
const serverClockTolerance = 100 * time.Millisecond

// serverClock is Mirage's clock as Config.Now, on the server's time once learnt off.
type serverClock struct {
	base     func() time.Time
	set      bool
	serverAt time.Time // the server's clock at the moment at
	at       time.Time // Mirage's own clock (base, with its monotonic reading) then
}

func (c *serverClock) now() time.Time {
	if !c.set {
		return c.base()
	}
	return c.serverAt.Add(c.base().Sub(c.at))
}

// learnServerClock asks evts for its info and returns the clock Mirage stamps times with:
// base when it agrees with the server's within serverClockTolerance, else base moved onto
// the server's clock. A server that does not say its time, or does not answer, leaves
// base (the start goes on: the info is asked again where it is needed).
func learnServerClock(ctx context.Context, evts jetstream.Stream, base func() time.Time, log *slog.Logger) *serverClock {
	c := &serverClock{base: base}
	sent := base()
	info, err := evts.Info(ctx)
	received := base()
	if err != nil || info.TimeStamp.IsZero() {
		return c
	}
	rtt := max(received.Sub(sent), 0)
	mid := sent.Add(rtt / 2)
	off := mid.Round(0).Sub(info.TimeStamp) // Mirage's clock minus the server's
	if off.Abs() <= rtt/2+serverClockTolerance {
		return c
	}
	c.set, c.serverAt, c.at = true, info.TimeStamp, mid
	log.Warn("Mirage's clock is off the NATS server's, which stamps stored events: Mirage keeps intents' times on the server's clock; synchronise the clocks (NTP)",
		"clock_offset_ms", off.Milliseconds(), "within_ms", (rtt / 2).Milliseconds())
	return c
}
