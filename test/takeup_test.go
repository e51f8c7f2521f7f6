package test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// An intent a stopped Mirage accepted after another Mirage started, and then stopped
// following without ending it, is taken up by the Mirage that serves when its event comes:
// it ends satisfied, the event counted once and answered accepted, the command run once.
// Here the older Mirage's link is held (as for a process stopped by SIGSTOP) while an
// issue is routed to it and the newer one starts and recovers (nothing of that intent is
// recorded yet), then delivered: the older accepts the intent, and its connection is
// closed before the Ghost, held too, answers. An event of an intent that is not recorded
// is still refused (1300).
func TestIntentOfAStoppedMirageIsTakenUpOnItsEvent(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	toOld := testenv.NewProxy(t, env.Server.Addr().String())
	toGhost := testenv.NewProxy(t, env.Server.Addr().String())
	// One probe each, at start: what the older sees is decided by its link alone.
	quiet := mirage.Config{ProbeEvery: time.Hour, StopBudget: time.Second}
	oldConn := env.URLConn("mirage old", toOld.URL())
	env.StartMirageOn(oldConn, quiet)
	const g = "edge-late"
	env.StartGhost(g, testenv.Via(env.URLConn("ghost "+g, toGhost.URL(), bus.GhostRequests())))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	kv, err := env.JetStream().KeyValue(ctx, bus.BucketIntents)
	if err != nil {
		t.Fatal(err)
	}
	acks := make(chan *nats.Msg, 64)
	watch := env.Conn("acks")
	if _, err := watch.ChanSubscribe(subjects.Ack(g), acks); err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}

	toOld.Pause()
	toGhost.Pause()
	is := testenv.NewIssue(g, "seed.flow", "sleep", map[string]string{"ms": "1000"}, 30*time.Second)
	data, err := bus.Encode(is)
	if err != nil {
		t.Fatal(err)
	}
	client := env.Conn("client")
	if err := client.Publish(subjects.Issue, data); err != nil { // routed to the older, held
		t.Fatal(err)
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	newCfg := quiet
	newCfg.Metrics = mirage.NewMetrics(reg)
	env.StartMirageOn(env.Conn("mirage new"), newCfg) // the older does not answer its probe
	if _, err := kv.Get(ctx, is.IntentID); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the intent is recorded before the newer Mirage recovered (%v): it would be recovered, not taken up", err)
	}
	toOld.Resume()
	testenv.Eventually(t, 10*time.Second, "the older Mirage to record the intent", func() bool {
		_, err := kv.Get(ctx, is.IntentID)
		return err == nil
	})
	oldConn.Close() // it stops following the intent, which stays open
	toGhost.Resume()

	cmd := mirage.CommandID(is.IntentID, 0)
	eventID := bus.EventID(g, cmd)
	wantAck := func(id string) bus.EventAck {
		t.Helper()
		for {
			select {
			case msg := <-acks:
				var a bus.EventAck
				if err := bus.Decode(msg.Data, &a); err != nil {
					t.Fatal(err)
				}
				if a.EventID == id {
					return a
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("no event.ack for %s", id)
			}
		}
	}
	if a := wantAck(eventID); a.AckStatus != bus.AckAccepted {
		t.Fatalf("the event of the intent the older Mirage accepted: event.ack %s %d; want accepted (taken up)", a.AckStatus, a.AckCode)
	}
	c, err := mirage.NewClient(env.Conn("reports"))
	if err != nil {
		t.Fatal(err)
	}
	r := waitReport(t, c, is.IntentID, 20*time.Second)
	if r.Phase != bus.PhaseSatisfied || len(r.Results) != 1 || r.Results[0].EventID != eventID {
		t.Fatalf("terminal report %s %q %+v; want satisfied by the Ghost's event", r.Phase, r.Summary, r.Results)
	}
	executions := map[string]bool{}
	for _, ev := range env.Events(env.JetStream()) {
		if ev.CommandID == cmd {
			executions[ev.ExecutionID] = true
		}
	}
	if len(executions) != 1 {
		t.Fatalf("the command ran %d times (executions %v); want once", len(executions), executions)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if n := sum(families, "edgectl_mirage_events_ingested_total", map[string]string{"verdict": "counted"}); n != 1 {
		t.Fatalf("the newer Mirage counted %v events; want 1", n)
	}

	// An event of an intent nobody recorded: refused as before.
	now := time.Now()
	stray := &bus.Event{Header: bus.NewHeader(bus.TypeEvent, "", now), IntentID: "int_neverrecorded",
		CommandID: "cmd_int_neverrecorded_0", EventID: bus.EventID(g, "cmd_int_neverrecorded_0"),
		ExecutionID: subjects.NewID(subjects.PrefixExecution), GhostID: g, SeedID: "seed.flow", Operation: "status",
		Outcome: bus.OutcomeSuccess, Result: bus.Result{Status: "ok"}, StartedMS: now.UnixMilli(), FinishedMS: now.UnixMilli()}
	if data, err = bus.Encode(stray); err != nil {
		t.Fatal(err)
	}
	if _, err := env.JetStream().PublishMsg(ctx, bus.NewMsg(subjects.Event(g), data, stray.EventID, stray.TraceID)); err != nil {
		t.Fatal(err)
	}
	if a := wantAck(stray.EventID); a.AckStatus != bus.AckRejected || a.AckCode != bus.CodeSemantic {
		t.Fatalf("an event of an unrecorded intent: event.ack %s %d; want rejected %d", a.AckStatus, a.AckCode, bus.CodeSemantic)
	}
}
