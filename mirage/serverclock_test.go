package mirage

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
)

// A running Mirage asks the server's clock again: its own clock, which agreed with the
// server's at start, drifts 30 s off it (a host without NTP, whose monotonic clock runs at
// its crystal's rate), and Mirage's times go back onto the server's; drifting again while
// on the server's clock, they go back again. Learnt once at start, a Mirage up for weeks
// drifted past the 500 ms grace its events are judged with.
func TestMirageClockFollowsTheServersWhenItsOwnDrifts(t *testing.T) {
	ns := natsdtest.Start(t, natsd.Config{DontListen: true, StoreDir: t.TempDir()})
	var ahead atomic.Int64 // Mirage's own clock ahead of the server's (monotonic reading too)
	m := startTestMirageWith(t, ns, Config{ServerClockEvery: 50 * time.Millisecond, Now: func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }}, nil)
	if d := m.cfg.Now().Sub(time.Now()); d.Abs() > time.Second {
		t.Fatalf("Mirage's clock %s off the server's at start", d)
	}
	for _, drift := range []time.Duration{30 * time.Second, 90 * time.Second} {
		ahead.Store(int64(drift))
		deadline := time.Now().Add(10 * time.Second)
		for {
			d := m.cfg.Now().Sub(time.Now())
			if d.Abs() < time.Second {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Mirage's own clock %s ahead: its clock stayed %s off the server's", drift, d.Round(time.Millisecond))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
