package test

import (
	"context"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
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
