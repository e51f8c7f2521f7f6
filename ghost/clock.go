package ghost

import (
	"sync"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// A command's deliver_by_ms is a time on Mirage's clock, and a Ghost's clock may be minutes
// off it: judged on the Ghost's own clock, a Ghost 5 minutes ahead refused every command of
// a 2-minute intent as expired (1600), and one 5 minutes behind ran commands long past the
// deadline Mirage set. So the Ghost judges deliver_by_ms on its estimate of Mirage's clock, learnt from each accepted registration: the
// register.ack carries Mirage's time when it took the register (timestamp_ms), between the
// request's send and the answer's arrival, so Mirage's clock at the round trip's middle is
// known within half the round trip. The estimate is kept as Mirage's time at a moment of
// this Ghost's monotonic clock, not as an offset between wall clocks: an NTP step of the
// Ghost's clock after the registration does not move it. A Ghost that never registered
// (headless, no Mirage yet) judges on its own clock.

// clockWarnAt is how far the Ghost's clock may be off Mirage's (beyond the estimate's
// uncertainty) before the Ghost warns.
const clockWarnAt = bus.ClockWarnAt

// mirageClock is the Ghost's estimate of Mirage's clock.
type mirageClock struct {
	mu  sync.Mutex
	set bool
	ms  int64         // Mirage's clock, unix ms, at the reference moment
	at  time.Time     // the Ghost's clock (with its monotonic reading) at that moment
	rtt time.Duration // the round trip the estimate came from: it is within rtt/2
}

// learn takes Mirage's time mirageMS, stamped between sent and received (this Ghost's
// clock), as the new reference; it returns the Ghost's clock minus Mirage's (positive: the
// Ghost is ahead) and the estimate's uncertainty.
func (c *mirageClock) learn(mirageMS int64, sent, received time.Time) (offset, within time.Duration) {
	rtt := max(received.Sub(sent), 0)
	mid := sent.Add(rtt / 2)
	c.mu.Lock()
	c.set, c.ms, c.at, c.rtt = true, mirageMS, mid, rtt
	c.mu.Unlock()
	return time.Duration(mid.UnixMilli()-mirageMS) * time.Millisecond, rtt/2 + time.Millisecond
}

// now returns Mirage's time at the Ghost's moment local (a value of the Ghost's clock),
// or local itself when no Mirage was heard from.
func (c *mirageClock) now(local time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.set {
		return local
	}
	return time.UnixMilli(c.ms).Add(local.Sub(c.at))
}

// mirageNow is the Ghost's estimate of Mirage's clock now.
func (g *Ghost) mirageNow() time.Time { return g.mclock.now(g.cfg.Now()) }

// learnMirageClock takes the time of an accepted register.ack (Mirage's clock, stamped
// between sent and received) as the estimate of Mirage's clock, and warns when this
// Ghost's clock is far off it.
func (g *Ghost) learnMirageClock(mirageMS int64, sent, received time.Time) {
	if mirageMS <= 0 {
		return
	}
	offset, within := g.mclock.learn(mirageMS, sent, received)
	g.clockOffset.Store(int64(offset / time.Millisecond))
	if offset.Abs()-within > clockWarnAt {
		g.log.Warn("this ghost's clock is far off Mirage's: commands' deliver_by_ms is judged on Mirage's clock as learnt at registration, but event times, logs and (with signed commands) the freshness window use this clock; synchronise it (NTP)",
			"clock_offset_ms", offset.Milliseconds(), "within_ms", within.Milliseconds())
	}
}

// ClockOffset is how far this Ghost's clock was ahead of Mirage's (negative: behind) at
// its last registration, and false when no Mirage accepted one yet.
func (g *Ghost) ClockOffset() (time.Duration, bool) {
	g.mclock.mu.Lock()
	set := g.mclock.set
	g.mclock.mu.Unlock()
	return time.Duration(g.clockOffset.Load()) * time.Millisecond, set
}
