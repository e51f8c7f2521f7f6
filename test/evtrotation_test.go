package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// An event EDGE_EVT's byte cap rotated out before Mirage read it still reaches Mirage.
// Mirage, cut off from NATS, misses a Ghost's event, which a flood of other events then
// pushes out of the capped stream. A re-send of it under its event_id inside the 15-minute
// duplicate window would be dropped by the stream as a duplicate (its id is remembered
// though the message is gone), so Mirage, back, sees that the stream removed events it had
// not read and announces it (events_lost); the Ghost then stores its unacknowledged events
// again under a Nats-Msg-Id of their own, and Mirage counts each by its event_id. Before,
// Mirage never learnt of the loss, the Ghost never re-sent, and the target ended timeout
// although it had succeeded.
func TestEventRotatedOutUnreadStillCounts(t *testing.T) {
	const ghostID = "edge-rot"
	env := testenv.New(t, testenv.Listen())
	proxy := testenv.NewProxy(t, env.Server.Addr().String())
	env.StartMirageOn(env.URLConn("mirage", proxy.URL()), mirage.Config{EventsMaxBytes: bus.MinEventsMaxBytes})
	env.StartGhost(ghostID)
	client := env.Client()
	js := env.JetStream()

	is := testenv.NewIssue(ghostID, "seed.flow", "sleep", map[string]string{"ms": "500"}, 15*time.Second)
	issueNoWait(t, client, is)
	proxy.Cut()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	evts, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	stored := func() bool {
		_, err := evts.GetLastMsgForSubject(ctx, subjects.Event(ghostID))
		return err == nil
	}
	testenv.Eventually(t, 10*time.Second, "the Ghost's event stored", stored)

	// Another party's events (junk Mirage refuses) fill the stream past its cap.
	junk := []byte(strings.Repeat("j", 900<<10))
	for range 2 * int(bus.MinEventsMaxBytes) / len(junk) {
		if _, err := js.Publish(ctx, "evt.edge-flood", junk); err != nil {
			t.Fatal(err)
		}
	}
	if stored() {
		t.Fatal("the Ghost's event is still in EDGE_EVT: the flood did not rotate it out")
	}

	proxy.Restore()
	if r := waitReport(t, client, is.IntentID, 25*time.Second); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("intent whose event was rotated out unread: %s, want satisfied", r.Summary)
	}
}
