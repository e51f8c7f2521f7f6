package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// One intent to two Ghosts: the report is satisfied, the events are in EDGE_EVT, and
// intent_id → command_id → execution_id → event_id line up in the report, the stored
// events and the Ghosts' execution stores.
func TestIntentEndToEnd(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	ghosts := map[string]*ghost.Ghost{"edge-a": env.StartGhost("edge-a"), "edge-b": env.StartGhost("edge-b")}
	client := env.Client()

	is := testenv.NewIssue("edge-a,edge-b", "seed.kv", "put", map[string]string{"key": "k1", "value": "v1"}, 10*time.Second)
	rep := env.Run(client, is)

	if rep.Phase != bus.PhaseSatisfied || rep.CompletionState != "complete" {
		t.Fatalf("phase %s / %s, want satisfied / complete: %s", rep.Phase, rep.CompletionState, rep.Summary)
	}
	if rep.Counts != (bus.Counts{Targets: 2, Success: 2}) {
		t.Fatalf("counts %+v", rep.Counts)
	}
	if rep.IntentID != is.IntentID || rep.TraceID != is.TraceID {
		t.Fatalf("report intent %s trace %s, issued %s %s", rep.IntentID, rep.TraceID, is.IntentID, is.TraceID)
	}
	events := env.Events(env.JetStream())
	if len(events) != 2 {
		t.Fatalf("EDGE_EVT holds %d events, want 2", len(events))
	}
	byEvent := map[string]bus.Event{}
	for _, ev := range events {
		byEvent[ev.EventID] = ev
	}
	ctx := context.Background()
	for i, res := range rep.Results {
		if want := mirage.CommandID(is.IntentID, i); res.CommandID != want {
			t.Errorf("result %d command_id %s, want %s", i, res.CommandID, want)
		}
		ev, ok := byEvent[res.EventID]
		if !ok {
			t.Fatalf("result %s names event %s, not in EDGE_EVT", res.GhostID, res.EventID)
		}
		if ev.IntentID != is.IntentID || ev.CommandID != res.CommandID || ev.ExecutionID != res.ExecutionID || ev.GhostID != res.GhostID || ev.TraceID != is.TraceID {
			t.Errorf("event %+v does not line up with result %+v", ev, res)
		}
		g := ghosts[res.GhostID]
		exec, err := g.Store().GetExecution(ctx, res.ExecutionID)
		if err != nil {
			t.Fatalf("%s: GetExecution(%s): %v", res.GhostID, res.ExecutionID, err)
		}
		byCmd, err := g.Store().GetByCommandID(ctx, res.CommandID)
		if err != nil || byCmd.ExecutionID != exec.ExecutionID {
			t.Fatalf("%s: GetByCommandID(%s) = %+v, %v", res.GhostID, res.CommandID, byCmd, err)
		}
		if exec.IntentID != is.IntentID || exec.State != ghost.StateFinished || exec.Event == nil || exec.Event.EventID != res.EventID {
			t.Errorf("%s: execution %+v does not line up", res.GhostID, exec)
		}
		if res.Outcome != bus.OutcomeSuccess || res.ExitCode != 0 {
			t.Errorf("%s: outcome %s exit %d", res.GhostID, res.Outcome, res.ExitCode)
		}
	}
	// The write really happened on each Ghost: a get through the whole loop returns it.
	get := env.Run(client, testenv.NewIssue("edge-a,edge-b", "seed.kv", "get", map[string]string{"key": "k1"}, 10*time.Second))
	for _, res := range get.Results {
		if res.Stdout == "" || !contains(res.Stdout, "v1") {
			t.Errorf("%s: get returned %q", res.GhostID, res.Stdout)
		}
	}
}

func contains(s, sub string) bool {
	return len(sub) == 0 || (len(s) >= len(sub) && indexOf(s, sub) >= 0)
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

// A registered target that does not host the seed is refused at issue time, with a
// reason that names it; so is one whose args the Ghost would refuse.
func TestIssueRefusesUnknownSeed(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("local")
	client := env.Client()
	for _, tc := range []struct {
		seed, op string
		args     map[string]string
		want     string
	}{
		{"seed.nope", "x", nil, "does not host seed seed.nope"},
		{"seed.flow", "nope", nil, "has no operation nope"},
		// Args are checked against the params the Ghost registered, as it would check them.
		{"seed.flow", "sleep", map[string]string{"ms": "abc"}, "args.ms: value does not match the declared pattern"},
		{"seed.flow", "echo", map[string]string{"foo": "bar"}, "args.foo: seed.flow echo declares no such param; it takes: message?"},
		{"seed.kv", "get", nil, "args.key: required by seed.kv get but missing"},
		// Limits are declared too: a range in the pattern, a size in max_bytes.
		{"seed.flow", "sleep", map[string]string{"ms": "60001"}, "args.ms: value 60001 is above the maximum 60000"},
		{"seed.flow", "echo", map[string]string{"message": strings.Repeat("a", 4097)}, "args.message: is 4097 bytes, at most 4096 are allowed"},
		{"seed.kv", "put", map[string]string{"key": "k", "value": strings.Repeat("v", 64<<10+1)}, "args.value: is 65537 bytes, at most 65536 are allowed"},
		{"seed.fs", "write", map[string]string{"path": "f", "content": strings.Repeat("c", 64<<10+1)}, "args.content: is 65537 bytes, at most 65536 are allowed"},
	} {
		_, err := client.Issue(context.Background(), testenv.NewIssue("local", tc.seed, tc.op, tc.args, 5*time.Second))
		var perr *bus.Error
		if !errors.Is(err, mirage.ErrRejected) || !errors.As(err, &perr) || perr.Code != bus.CodeSemantic || !contains(perr.Message, tc.want) {
			t.Errorf("%s %s: err %v, want a 1300 rejection mentioning %q", tc.seed, tc.op, err, tc.want)
		}
	}
}

// A target with no Ghost behind it ends as timeout within the intent's timeout plus 1 s.
func TestSilentTargetTimesOut(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("alive")
	client := env.Client()
	start := time.Now()
	rep := env.Run(client, testenv.NewIssue("alive,ghost-nobody", "seed.flow", "status", nil, 1500*time.Millisecond))
	if rep.Phase != bus.PhaseFailed || rep.Counts.Success != 1 || rep.Counts.Timeout != 1 {
		t.Fatalf("report %s %+v", rep.Summary, rep.Counts)
	}
	// When Mirage made the report (its timestamp; one clock here), not when this client
	// got it: the wait's own delivery, slow on two busy cores under -race, is not Mirage's.
	if took := time.UnixMilli(rep.TimestampMS).Sub(start); took > 2500*time.Millisecond {
		t.Errorf("timeout reported after %s, want within timeout+1s", took)
	}
	for _, r := range rep.Results {
		if r.GhostID == "ghost-nobody" && (r.Outcome != bus.OutcomeTimeout || r.Error == nil || r.Error.Code != bus.CodeNoResponse) {
			t.Errorf("silent target result %+v", r)
		}
	}
}

// An execution that runs past the command's timeout ends as a runtime error (1401) from
// the Ghost, not as a silent target.
func TestExecutionTimeoutEnforced(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("slow")
	rep := env.Run(env.Client(), testenv.NewIssue("slow", "seed.flow", "sleep", map[string]string{"ms": "5000"}, 700*time.Millisecond))
	r := rep.Results[0]
	if rep.Phase != bus.PhaseFailed || r.Outcome != bus.OutcomeError || r.Error == nil || r.Error.Code != bus.CodeExecTimeout {
		t.Fatalf("report %s, result %+v", rep.Summary, r)
	}
}

// A client that re-sends an issue whose answer it lost gets the same intent accepted
// again, not a second intent and not a refusal; a different issue under that id is refused.
func TestReSentIssueIsAcceptedOnce(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("edge-r")
	client := env.Client()
	is := testenv.NewIssue("edge-r", "seed.kv", "incr", map[string]string{"key": "once"}, 10*time.Second)
	first, err := client.Issue(context.Background(), is)
	if err != nil {
		t.Fatal(err)
	}
	again, err := client.Issue(context.Background(), is)
	if err != nil || again.IntentID != first.IntentID {
		t.Fatalf("re-sent issue: %+v %v", again, err)
	}
	r := waitReport(t, client, is.IntentID, 15*time.Second)
	if r.Phase != bus.PhaseSatisfied || r.Results[0].Stdout != "1" {
		t.Fatalf("%s %+v", r.Summary, r.Results)
	}
	other := *is
	other.Objective.Args = map[string]string{"key": "other"}
	if _, err := client.Issue(context.Background(), &other); !errors.Is(err, mirage.ErrRejected) {
		t.Fatalf("a different issue under an existing id: %v", err)
	}
}

// Two different issues racing under one new intent id: one is accepted, the other is
// refused, and only the accepted one's command runs (commands of a fresh intent leave
// while its record is stored, so the id must be claimed before they do).
func TestRacingIssuesUnderOneNewIDRunOnce(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("edge-race")
	client := env.Client()
	for round := range 5 {
		a := testenv.NewIssue("edge-race", "seed.kv", "incr", map[string]string{"key": fmt.Sprintf("a%d", round)}, 10*time.Second)
		b := *a
		b.Objective.Args = map[string]string{"key": fmt.Sprintf("b%d", round)}
		errs := make(chan error, 2)
		for _, is := range []*bus.Issue{a, &b} {
			go func() { _, err := client.Issue(context.Background(), is); errs <- err }()
		}
		accepted := 0
		for range 2 {
			err := <-errs
			switch {
			case err == nil:
				accepted++
			case !errors.Is(err, mirage.ErrRejected):
				t.Fatalf("round %d: %v", round, err)
			}
		}
		if accepted != 1 {
			t.Fatalf("round %d: %d of two different issues under one id accepted", round, accepted)
		}
		r := waitReport(t, client, a.IntentID, 15*time.Second)
		if r.Phase != bus.PhaseSatisfied {
			t.Fatalf("round %d: %s", round, r.Summary)
		}
		// Exactly one of the two keys was incremented.
		ran := 0
		for _, key := range []string{fmt.Sprintf("a%d", round), fmt.Sprintf("b%d", round)} {
			rep := env.Run(client, testenv.NewIssue("edge-race", "seed.kv", "get", map[string]string{"key": key}, 10*time.Second))
			if rep.Phase == bus.PhaseSatisfied && rep.Results[0].Stdout == "1" {
				ran++
			}
		}
		if ran != 1 {
			t.Fatalf("round %d: %d commands ran for one intent id", round, ran)
		}
	}
}

// An intent's terminal state is its terminal report (its record stays as accepted): a
// Mirage that starts afterwards does not take the ended intent up again, dispatches
// nothing for it, and answers a late event for it with "already ended" (1900).
func TestEndedIntentStaysEndedAcrossMirageRestart(t *testing.T) {
	env := testenv.New(t)
	first := env.StartMirage(mirage.Config{})
	env.StartGhost("edge-end")
	client := env.Client()
	is := testenv.NewIssue("edge-end", "seed.kv", "incr", map[string]string{"key": "k"}, 10*time.Second)
	if rep := env.Run(client, is); rep.Phase != bus.PhaseSatisfied {
		t.Fatalf("%s", rep.Summary)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec, err := first.Intent(ctx, is.IntentID)
	if err != nil || bus.Terminal(rec.Phase) {
		t.Fatalf("record of the ended intent: %+v %v (it stays as accepted)", rec, err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	js := env.JetStream()
	commandsBefore := storedIDs(t, js, bus.StreamCommands)

	acks := make(chan *bus.EventAck, 4)
	nc := env.Conn("watch acks")
	if _, err := nc.Subscribe(subjects.Ack("edge-end"), func(m *nats.Msg) {
		var ack bus.EventAck
		if bus.Decode(m.Data, &ack) == nil {
			acks <- &ack
		}
	}); err != nil {
		t.Fatal(err)
	}
	env.StartMirage(mirage.Config{})
	// A late, different event for the ended intent's command.
	ev := &bus.Event{Header: bus.NewHeader(bus.TypeEvent, is.TraceID, time.Now()), EventID: "evt_late", CommandID: mirage.CommandID(is.IntentID, 0),
		IntentID: is.IntentID, ExecutionID: "exe_late", GhostID: "edge-end", SeedID: "seed.kv", Operation: "incr",
		Outcome: bus.OutcomeSuccess, Result: bus.Result{Status: "ok", Stdout: "2"}, StartedMS: time.Now().UnixMilli(), FinishedMS: time.Now().UnixMilli()}
	data, err := bus.Encode(ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, bus.NewMsg(subjects.Event("edge-end"), data, ev.EventID, ev.TraceID)); err != nil {
		t.Fatal(err)
	}
	select {
	case ack := <-acks:
		if ack.EventID != "evt_late" || ack.AckStatus != bus.AckRejected || ack.AckCode != bus.CodeNoResponse {
			t.Fatalf("late event answered %+v, want rejected 1900", ack)
		}
	case <-ctx.Done():
		t.Fatal("no event.ack for the late event")
	}
	rep, err := client.LatestReport(ctx, is.IntentID)
	if err != nil || rep.Phase != bus.PhaseSatisfied {
		t.Fatalf("latest report after the restart: %+v %v", rep, err)
	}
	if after := storedIDs(t, js, bus.StreamCommands); len(after) != len(commandsBefore) {
		t.Fatalf("the restarted Mirage dispatched again: %d commands stored, %d before", len(after), len(commandsBefore))
	}
}

// A client that did not get its answer sends the issue again; meanwhile the fleet changed
// (its glob's only Ghost left the registry). The intent is being followed, so the re-sent issue is
// accepted again, with the same targets, and ends as it would have: it is not refused
// because its scope no longer resolves.
func TestResentIssueIsAcceptedAgainAfterTheFleetChanged(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("edge-gone")
	client := env.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	is := testenv.NewIssue("edge-go*", "seed.flow", "sleep", map[string]string{"ms": "1500"}, 10*time.Second)
	if _, err := client.Issue(ctx, is); err != nil {
		t.Fatal(err)
	}
	if err := m.Revoke(ctx, "edge-gone"); err != nil { // forgets the registry record
		t.Fatal(err)
	}
	if _, err := client.Issue(ctx, testenv.NewIssue("edge-go*", "seed.flow", "status", nil, 5*time.Second)); !errors.Is(err, mirage.ErrRejected) {
		t.Fatalf("a new issue to the forgotten Ghost: %v; want it refused (the test shows nothing otherwise)", err)
	}
	reply, err := client.Issue(ctx, is)
	if err != nil {
		t.Fatalf("the same issue sent again: %v; want accepted again", err)
	}
	if len(reply.Targets) != 1 || reply.Targets[0] != "edge-gone" {
		t.Fatalf("accepted again with targets %v", reply.Targets)
	}
	if rep := waitReport(t, client, is.IntentID, 10*time.Second); rep.Phase != bus.PhaseSatisfied {
		t.Fatalf("the intent: %s", rep.Summary)
	}
}

// An intent recorded in edge_intents but not followed: its issue was refused because the
// store's answer to the record was lost (simulated: the id is claimed by a refused issue,
// then the record is written as that lost Create would have). When the client sends the
// issue again, Mirage takes the intent up: it runs once and ends with a terminal report,
// instead of being "accepted again" and never reported (and run only by the next Mirage).
func TestRecordedButUnfollowedIntentIsTakenUpWhenItsIssueComesAgain(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("edge-adopt")
	client := env.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	is := testenv.NewIssue("edge-adopt", "seed.kv", "incr", map[string]string{"key": "a"}, 10*time.Second)
	refused := *is
	refused.DeliverByMS = time.Now().Add(-time.Hour).UnixMilli()
	if _, err := client.Issue(ctx, &refused); !errors.Is(err, mirage.ErrRejected) {
		t.Fatalf("want the issue refused, got %v", err)
	}
	now := time.Now()
	rec := mirage.IntentRecord{IntentID: is.IntentID, Issue: *is, Targets: []string{"edge-adopt"},
		Steps:     []mirage.StepRecord{{Objective: is.Objective, Targets: []string{"edge-adopt"}}},
		MaxErrors: -1, CreatedMS: now.UnixMilli(), DeadlineMS: now.Add(10 * time.Second).UnixMilli(),
		DeliverByMS: now.Add(10 * time.Second).UnixMilli(), Phase: bus.PhasePending}
	data, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := env.JetStream().KeyValue(ctx, bus.BucketIntents)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, is.IntentID, data); err != nil {
		t.Fatal(err)
	}
	if rep := env.Run(client, is); rep.Phase != bus.PhaseSatisfied || rep.Results[0].Stdout != "1" {
		t.Fatalf("the issue sent again: %s %+v; want it taken up and run once", rep.Summary, rep.Results)
	}
	if rep := env.Run(client, is); rep.Phase != bus.PhaseSatisfied || rep.Results[0].Stdout != "1" {
		t.Fatalf("the issue sent a third time: %s %+v; want the same terminal report, nothing run again", rep.Summary, rep.Results)
	}
	get := env.Run(client, testenv.NewIssue("edge-adopt", "seed.kv", "get", map[string]string{"key": "a"}, 10*time.Second))
	if get.Phase != bus.PhaseSatisfied || get.Results[0].Stdout != "1" {
		t.Fatalf("the counter: %s %+v; want 1 (run once)", get.Summary, get.Results)
	}
}

// While the store refuses a fresh intent's record, the intent still runs, its id stays
// taken (a different issue under it is refused, during the intent and after it ended),
// and the record is stored once the store takes writes again.
func TestUnrecordedIntentKeepsItsID(t *testing.T) {
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("edge-rec")
	client := env.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js := env.JetStream()
	stream, err := js.Stream(ctx, "KV_"+bus.BucketIntents)
	if err != nil {
		t.Fatal(err)
	}
	open := stream.CachedInfo().Config
	full := open
	full.MaxMsgs, full.Discard = 1, jetstream.DiscardNew
	if _, err := js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	// One record fills the bucket; the next is refused.
	if rep := env.Run(client, testenv.NewIssue("edge-rec", "seed.flow", "status", nil, 10*time.Second)); rep.Phase != bus.PhaseSatisfied {
		t.Fatalf("first intent: %s", rep.Summary)
	}
	is := testenv.NewIssue("edge-rec", "seed.kv", "incr", map[string]string{"key": "r"}, 10*time.Second)
	if rep := env.Run(client, is); rep.Phase != bus.PhaseSatisfied || rep.Results[0].Stdout != "1" {
		t.Fatalf("intent whose record is refused: %s %+v", rep.Summary, rep.Results)
	}
	if _, err := m.Intent(ctx, is.IntentID); !errors.Is(err, mirage.ErrIntentNotFound) {
		t.Fatalf("the record was stored although the bucket is full: %v", err)
	}
	other := *is
	other.Objective.Args = map[string]string{"key": "other"}
	if _, err := client.Issue(ctx, &other); !errors.Is(err, mirage.ErrRejected) {
		t.Fatalf("a different issue under the unrecorded intent's id: %v", err)
	}
	if _, err := client.Issue(ctx, is); err != nil {
		t.Fatalf("the same issue re-sent: %v", err)
	}
	if _, err := js.UpdateStream(ctx, open); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the record stored on retry", func() bool {
		rec, err := m.Intent(ctx, is.IntentID)
		return err == nil && rec.IntentID == is.IntentID
	})
	if _, err := client.Issue(ctx, &other); !errors.Is(err, mirage.ErrRejected) {
		t.Fatalf("a different issue under the recorded id: %v", err)
	}
	if rep := env.Run(client, testenv.NewIssue("edge-rec", "seed.kv", "get", map[string]string{"key": "other"}, 10*time.Second)); rep.Results[0].Stdout == "1" {
		t.Fatal("the refused issue's command ran")
	}
}
