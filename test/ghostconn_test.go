package test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// A ghostctl waits for each reply on a subject subscribed for that request alone
// (bus.GhostRequests): registered, and with an event stored (a request to EDGE_EVT), it
// holds no wildcard subscription, which would cost the server a scan of its subscription
// cache for every Ghost that connects.
func TestGhostctlHoldsNoWildcardSubscription(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	m := env.StartMirage(mirage.Config{})
	g := newGhostProc(t, env, "edge-subs")
	g.start(m)
	client := env.Client()
	is := testenv.NewIssue("edge-subs", "seed.flow", "echo", map[string]string{"message": "hello"}, 10*time.Second)
	issueNoWait(t, client, is)
	if r := waitReport(t, client, is.IntentID, 20*time.Second); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("intent: %s %+v", r.Summary, r.Results)
	}
	connz, err := env.Server.Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		t.Fatal(err)
	}
	var subs []string
	found := false
	for _, c := range connz.Conns {
		if c.Name == "ghost edge-subs" {
			found, subs = true, c.Subs
		}
	}
	if !found {
		t.Fatalf("no connection named %q among %d", "ghost edge-subs", len(connz.Conns))
	}
	if len(subs) == 0 {
		t.Fatal("the Ghost's connection holds no subscription: the listing is not what this test reads")
	}
	for _, s := range subs {
		if strings.ContainsAny(s, "*>") {
			t.Errorf("the Ghost holds the wildcard subscription %q (all: %v)", s, subs)
		}
	}
}
