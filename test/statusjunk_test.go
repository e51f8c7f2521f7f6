package test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// statusHeaders are headers with which a stored message with an empty body reads, to
// nats.go's consumers, as a status of the server: 400 and 409 "Consumer Deleted" stop a
// consumer, 503 is "no responders", 100 a heartbeat (passed over in silence), 408 and 404
// a pull request's end.
var statusHeaders = []nats.Header{
	{"Status": {"400"}, "Description": {"Bad Request"}},
	{"Status": {"409"}, "Description": {"Consumer Deleted"}},
	{"Status": {"503"}},
	{"Status": {"100"}, "Description": {"Idle Heartbeat"}},
	{"Status": {"408"}, "Description": {"Request Timeout"}},
	{"Status": {"404"}, "Description": {"No Messages"}},
}

// An event with an empty body and a Status header, which any Ghost may publish on its
// evt.<id> (under auth too) and EDGE_EVT stores, reads to nats.go as a status of the
// server: it stopped Mirage's events consumer for good (every later intent ended
// timeout), held every timeout report back by the lost-delivery wait (36 s), and, in
// EDGE_EVT or EDGE_CMD when Mirage restarted, failed its start ("recover open intents:
// no responders"). Mirage deletes such events from EDGE_EVT and its reads pass over them.
func TestStoredMessagesThatReadAsAStatusDoNotStopMirage(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("local")
	rogue := env.Conn("rogue")
	js := env.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	publish := func(subject string) {
		t.Helper()
		for _, h := range statusHeaders {
			if err := rogue.PublishMsg(&nats.Msg{Subject: subject, Header: h}); err != nil {
				t.Fatal(err)
			}
		}
		if err := rogue.Flush(); err != nil {
			t.Fatal(err)
		}
	}

	// Live: the events consumer goes on, and the junk is deleted from EDGE_EVT.
	publish(subjects.Event("local"))
	if r := env.Run(env.Client(), testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent after the junk events: %s", r.Summary)
	}
	evts, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "the junk events deleted from EDGE_EVT", func() bool {
		info, err := evts.Info(ctx)
		return err == nil && info.State.Msgs == 1 // the intent's own event
	})
	// A timeout is reported without the lost-delivery wait.
	start := time.Now()
	is := testenv.NewIssue("nobody", "seed.flow", "status", nil, 2*time.Second)
	if _, r, err := env.Client().IssueAndWait(ctx, is); err != nil || r.Counts.Timeout != 1 {
		t.Fatalf("an intent to no Ghost: %v %+v", err, r)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("the timeout was reported after %s", d)
	}

	// A restart: junk in EDGE_EVT and EDGE_CMD after an open intent's creation.
	open := testenv.NewIssue("local", "seed.flow", "sleep", map[string]string{"ms": "2000"}, 20*time.Second)
	if _, err := env.Client().Issue(ctx, open); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	publish(subjects.Event("local"))
	publish(subjects.Command("nobody"))
	m2 := env.StartMirageOn(env.Conn("mirage again"), mirage.Config{}) // fails the test if it does not start
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if r, err := env.Client().WaitTerminal(wctx, open.IntentID); err != nil || r.Phase != bus.PhaseSatisfied {
		t.Fatalf("the open intent after the restart: %v %+v", err, r)
	}
	if r := env.Run(env.Client(), testenv.NewIssue("local", "seed.flow", "status", nil, 5*time.Second)); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("an intent after the restart: %s", r.Summary)
	}
	_ = m2
}
