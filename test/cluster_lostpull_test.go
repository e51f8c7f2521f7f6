package test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// On a 3-node cluster, the link between Mirage's server and the server leading the events
// consumer drops for a moment while an intent's event is stored: the leader, finding no
// route to Mirage's inbox, drops Mirage's waiting pull without a word (nats-server removes
// a pull request whose reply subject has no interest), and no heartbeat comes for it any
// more. Mirage pulls again once it misses the heartbeats: it reads the event within
// seconds of the link coming back (about 1.5 s; 10 s allowed), where with nats.go's
// defaults (30 s pulls, 15 s heartbeats, missed after 2 × 15 s) it read it 29.4 s later,
// and the intent ends satisfied. Three rounds.
func TestClusterEventsConsumerPullsAgainAfterALostPull(t *testing.T) {
	cl := testenv.NewCluster(t, 3, testenv.RouteProxies())
	env := cl.Env()
	admin := cl.Conn("test-admin", 2)
	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	const mirageNode, consumerNode, storeNode = 0, 1, 2
	m := env.StartMirageOn(cl.Conn("mirage", mirageNode), mirage.Config{Replicas: 3})
	g := newFixture(t, env, "edge-lost-pull")
	g.start(testenv.Via(cl.Conn("ghost edge-lost-pull", storeNode, bus.GhostRequests())))
	testenv.Eventually(t, 15*time.Second, "the Ghost to register", func() bool { _, ok := m.Fleet().Get(g.id); return ok })
	client, err := mirage.NewClient(cl.Conn("client", mirageNode))
	if err != nil {
		t.Fatal(err)
	}
	// What an intent needs besides the events consumer is led from the third server, which
	// both ends of the cut still reach.
	for _, s := range []string{bus.StreamCommands, bus.StreamEvents, bus.StreamReports, "KV_" + bus.BucketIntents} {
		colocateLeader(t, cl, admin, js, s, storeNode)
	}
	colocateEventsConsumer(t, cl, admin, js, consumerNode)
	issue := func() *bus.Issue {
		t.Helper()
		is := testenv.NewIssue(g.id, "seed.kv", "incr", map[string]string{"key": "c"}, time.Minute)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := client.Issue(ctx, is); err != nil {
			t.Fatalf("issue: %v", err)
		}
		return is
	}
	satisfied := func(is *bus.Issue) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		r, err := client.WaitTerminal(ctx, is.IntentID)
		if err != nil {
			t.Fatalf("no terminal report for %s within 30 s: %v", is.IntentID, err)
		}
		if r.Phase != bus.PhaseSatisfied {
			t.Fatalf("intent %s: %s %+v", is.IntentID, r.Phase, r.Results)
		}
	}
	satisfied(issue())
	for round := 1; round <= 3; round++ {
		if leader, _ := eventsConsumerInfo(js); leader != cl.NodeName(consumerNode) {
			colocateEventsConsumer(t, cl, admin, js, consumerNode)
		}
		before := lastEvent(t, js)
		cl.CutRoutes(mirageNode, consumerNode)
		is := issue()
		// The event is stored while the routes are down: the leader has it to deliver, and
		// no way to Mirage's pull.
		testenv.Eventually(t, 10*time.Second, "the event to be stored", func() bool { return lastEvent(t, js) > before })
		time.Sleep(500 * time.Millisecond)
		cl.RestoreRoutes(mirageNode, consumerNode)
		restored := time.Now()
		var info *jetstream.ConsumerInfo
		for {
			if _, info = eventsConsumerInfo(js); info != nil && info.NumPending == 0 && info.NumAckPending == 0 {
				break
			}
			if time.Since(restored) > 10*time.Second {
				if info == nil {
					info = &jetstream.ConsumerInfo{}
				}
				t.Fatalf("round %d: the event stored during the cut not read by Mirage 10 s after the routes came back (events consumer: %d pending, %d waiting pulls)",
					round, info.NumPending, info.NumWaiting)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("round %d: the event read %s after the routes came back", round, time.Since(restored).Round(time.Millisecond))
		satisfied(is)
		cl.WaitReady(30 * time.Second)
	}
}

// eventsConsumerInfo returns the leader of Mirage's events consumer and its info, or ""
// and nil.
func eventsConsumerInfo(js jetstream.JetStream) (string, *jetstream.ConsumerInfo) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := js.Consumer(ctx, bus.StreamEvents, mirage.EventsConsumer)
	if err != nil {
		return "", nil
	}
	info, err := c.Info(ctx)
	if err != nil || info.Cluster == nil {
		return "", nil
	}
	return info.Cluster.Leader, info
}

// lastEvent is the last sequence of EDGE_EVT.
func lastEvent(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatalf("%s: %v", bus.StreamEvents, err)
	}
	return s.CachedInfo().State.LastSeq
}

// colocateEventsConsumer moves the leadership of Mirage's events consumer to node.
func colocateEventsConsumer(t *testing.T, cl *testenv.Cluster, nc *nats.Conn, js jetstream.JetStream, node int) {
	t.Helper()
	want := cl.NodeName(node)
	testenv.Eventually(t, 30*time.Second, want+" to lead the events consumer", func() bool {
		if leader, _ := eventsConsumerInfo(js); leader == want {
			return true
		} else if leader == "" {
			return false
		}
		req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": want}})
		_, _ = nc.Request("$JS.API.CONSUMER.LEADER.STEPDOWN."+bus.StreamEvents+"."+mirage.EventsConsumer, req, 5*time.Second)
		time.Sleep(250 * time.Millisecond)
		leader, _ := eventsConsumerInfo(js)
		return leader == want
	})
}
