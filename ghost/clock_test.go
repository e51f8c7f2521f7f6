package ghost_test

import (
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// skewedGhost starts Ghost id whose clock is skew off the real one (Mirage's), registered
// with the Mirage of env.
func skewedGhost(t *testing.T, env *testenv.Env, id string, skew time.Duration) *ghost.Ghost {
	t.Helper()
	g := env.StartGhost(id, testenv.Seeds("seed.flow"), testenv.Tune(func(c *ghost.Config) {
		c.Now = func() time.Time { return time.Now().Add(skew) }
	}))
	testenv.Eventually(t, 10*time.Second, "the Ghost registered", g.Registered)
	return g
}

// A Ghost whose clock runs 5 minutes ahead of Mirage's runs a 10-second intent's command:
// its deliver_by_ms (the intent's deadline, on Mirage's clock) is judged on Mirage's
// clock, as learnt at registration. Judged on its own, the command had expired (1600)
// before it was sent, and so had every command of any intent shorter than 5 minutes.
func TestGhostClockAheadOfMirageStillRunsCommands(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	g := skewedGhost(t, env, "ahead", 5*time.Minute)
	if off, ok := g.ClockOffset(); !ok || off < 4*time.Minute || off > 6*time.Minute {
		t.Fatalf("ClockOffset %s %v, want about 5m ahead", off, ok)
	}
	// Mirage notes it too, for 'miragectl ghosts' (clock_offset_ms).
	if rec, ok := m.Fleet().Get("ahead"); !ok || rec.ClockOffsetMS < 240_000 || rec.ClockOffsetMS > 360_000 {
		t.Fatalf("Mirage's record %+v, want clock_offset_ms about 300000", rec)
	}
	r := env.Run(env.Client(), testenv.NewIssue("ahead", "seed.flow", "echo", map[string]string{"message": "in time"}, 10*time.Second))
	if r.Phase != bus.PhaseSatisfied || len(r.Results) != 1 || r.Results[0].Stdout != "in time" {
		t.Fatalf("report %s %s %+v, want satisfied with the echo", r.Phase, r.Summary, r.Results)
	}
}

// A Ghost whose clock runs 5 minutes behind Mirage's does not run a command whose
// deliver_by_ms has passed on Mirage's clock: 1600. Judged on its own clock, it had 5
// minutes left and ran.
func TestGhostClockBehindMirageRefusesAPassedDeliverBy(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	const id = "behind"
	skewedGhost(t, env, id, -5*time.Minute)
	now := time.Now() // Mirage's clock
	cmd := bus.Command{Header: bus.NewHeader(bus.TypeCommand, "", now.Add(-3*time.Second)), CommandID: subjects.NewID(subjects.PrefixCommand),
		IntentID: subjects.NewID(subjects.PrefixIntent), GhostID: id, SeedSelector: "seed.flow", Operation: "echo",
		Args: map[string]string{"message": "too late"}, DeliverByMS: now.Add(-2 * time.Second).UnixMilli(), TimeoutMS: 5000}
	data, err := bus.Encode(&cmd)
	if err != nil {
		t.Fatal(err)
	}
	nc := env.Conn("operator")
	if err := nc.Publish(subjects.Command(id), data); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	want := bus.EventID(id, cmd.CommandID)
	var got *bus.Event
	testenv.Eventually(t, 10*time.Second, "the Ghost's event", func() bool {
		for _, ev := range env.Events(env.JetStream()) {
			if ev.EventID == want {
				got = &ev
				return true
			}
		}
		return false
	})
	if got.Error == nil || got.Error.Code != bus.CodeExpired {
		t.Fatalf("event %s %+v %+v, want expired 1600: deliver_by_ms passed 2 s ago on Mirage's clock", got.Outcome, got.Result, got.Error)
	}
}
