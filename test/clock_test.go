package test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// A Mirage whose host clock is 5 minutes behind the NATS server's (which stamps stored
// events, and so judges whether an event is in time) keeps its intents' times on the
// server's clock: a 3-second intent whose command succeeds ends satisfied within seconds.
// On its own clock, the intent's deadline was 5 minutes before the server stored the
// event, which was late (1900), and the target ended 'timeout' though it ran.
func TestMirageClockBehindTheServersKeepsEventsInTime(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{Now: func() time.Time { return time.Now().Add(-5 * time.Minute) }})
	env.StartGhost("edge-c")
	testenv.Eventually(t, 10*time.Second, "edge-c registered", func() bool { _, ok := m.Fleet().Get("edge-c"); return ok })
	client := env.Client()
	is := testenv.NewIssue("edge-c", "seed.flow", "echo", map[string]string{"message": "in time"}, 3*time.Second)
	before := time.Now()
	r := env.Run(client, is)
	if r.Phase != bus.PhaseSatisfied || r.Counts.Success != 1 {
		t.Fatalf("report %s %q %+v, want satisfied: the event was stored in time", r.Phase, r.Summary, r.Results)
	}
	if took := time.Since(before); took > 10*time.Second {
		t.Fatalf("the intent took %s", took)
	}
	rec, err := client.Intent(context.Background(), is.IntentID)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.UnixMilli(rec.CreatedMS).Sub(before); d < -time.Second || d > 5*time.Second {
		t.Fatalf("created_ms %s off the server's clock at the issue, want on it", d)
	}
}

// The edgectl_mirage_ghosts gauge judges presence on Mirage's clock, the one that stamped
// last_seen_ms and that its other presence judgements use (an issue's note on stale
// targets): here Mirage's clock moves 30 s ahead after its start, and a Ghost that stopped
// beating is stale in both. The gauge read the host's clock, and could say online what
// Mirage treated as stale (on a host whose clock is off the server's, every Ghost).
func TestMirageGhostsGaugeUsesMiragesClock(t *testing.T) {
	env := testenv.New(t)
	var ahead atomic.Int64
	reg := prometheus.NewRegistry()
	m := env.StartMirage(mirage.Config{Now: func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }})
	m.Observe(reg)
	env.StartGhost("edge-g", testenv.Tune(func(c *ghost.Config) { c.HeartbeatInterval = time.Hour }))
	testenv.Eventually(t, 10*time.Second, "edge-g registered", func() bool { _, ok := m.Fleet().Get("edge-g"); return ok })
	ahead.Store(int64(30 * time.Second))
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if got := sum(families, "edgectl_mirage_ghosts", map[string]string{"status": mirage.StatusStale}); got != 1 {
		t.Fatalf("edgectl_mirage_ghosts{status=stale} = %v, want 1: 30 s without a heartbeat on Mirage's clock", got)
	}
}

// When Mirage's clock moves by more than a second (here Mirage's own clock jumps 30 s
// ahead and is then set back on the server's, as when the server's clock is stepped while
// Mirage keeps to it), Mirage announces itself again, and its Ghosts, which judge
// deliver_by_ms on Mirage's clock as they learnt it at registration, register again and
// learn it anew. Without that, a Ghost that learnt it 30 s ahead refused as expired (1600)
// every command of an intent shorter than 30 s until it happened to register again.
func TestGhostsLearnMiragesClockAgainWhenItMoves(t *testing.T) {
	env := testenv.New(t)
	var ahead atomic.Int64
	env.StartMirage(mirage.Config{ServerClockEvery: 5 * time.Second, Now: func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }})
	ahead.Store(int64(30 * time.Second))
	g := env.StartGhost("edge-m")
	testenv.Eventually(t, 10*time.Second, "edge-m registered", g.Registered)
	if off, ok := g.ClockOffset(); !ok || off > -25*time.Second {
		t.Fatalf("the Ghost learnt an offset of %s (%v), want about -30s: it registered after Mirage's clock moved back, the test checks nothing", off, ok)
	}
	testenv.Eventually(t, 15*time.Second, "the Ghost learnt Mirage's clock again, back on the server's", func() bool {
		off, _ := g.ClockOffset()
		return off.Abs() < 2*time.Second
	})
	r := env.Run(env.Client(), testenv.NewIssue("edge-m", "seed.flow", "echo", map[string]string{"message": "in time"}, 10*time.Second))
	if r.Phase != bus.PhaseSatisfied || r.Counts.Success != 1 {
		t.Fatalf("report %s %q %+v, want satisfied", r.Phase, r.Summary, r.Results)
	}
}
