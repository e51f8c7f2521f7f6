package test

import (
	"context"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// A report wait begun while its server is away (restarting, or on a cluster a stream or
// the meta group electing a leader) waits for it: the consumer it could not make is made
// again, as one lost later is. It failed instead once the making went unanswered 5 s
// ('report --wait' and a waiting 'issue' exited 3 a few seconds into a failover, in a
// chaos run on a 3-node cluster with "context deadline exceeded" or "JetStream system
// temporarily unavailable").
func TestReportWaitBegunWhileTheServerIsAwayWaitsForIt(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirageOn(env.URLConn("mirage", ""), mirage.Config{})
	env.StartGhost("edge-away", testenv.Via(env.URLConn("ghost", "")))
	nc := env.URLConn("client", "")
	client, err := mirage.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	is := testenv.NewIssue("edge-away", "seed.kv", "incr", map[string]string{"key": "c"}, 20*time.Second)
	if r := env.Run(client, is); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("before the restart: %s %s", r.Phase, r.Summary)
	}

	env.StopServer()
	testenv.Eventually(t, 10*time.Second, "the client to see its server gone", func() bool { return !nc.IsConnected() })
	type answer struct {
		r   *bus.Report
		err error
	}
	waited := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
		defer cancel()
		r, err := client.WaitTerminal(ctx, is.IntentID)
		waited <- answer{r, err}
	}()
	env.RestartServer(7 * time.Second) // longer than one try to make the consumer (5 s)
	select {
	case a := <-waited:
		if a.err != nil || a.r.Phase != bus.PhaseSatisfied {
			t.Fatalf("wait begun while the server was away: %+v, %v", a.r, a.err)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("the wait did not end")
	}
}
