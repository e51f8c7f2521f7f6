package test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// fillStore fills the server's JetStream store with a stream of its own until the server
// refuses writes for want of room ("insufficient resources"), and returns that stream's
// name: deleting it gives the room back.
func fillStore(t *testing.T, ctx context.Context, js jetstream.JetStream) string {
	t.Helper()
	const name = "TEST_FILL"
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{"testfill.>"}}); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{512 << 10, 1 << 10} {
		data := []byte(strings.Repeat("x", size))
		for n := 0; ; n++ {
			_, err := js.Publish(ctx, "testfill.x", data)
			if err != nil {
				var apiErr *jetstream.APIError
				if !errors.As(err, &apiErr) || apiErr.ErrorCode != 10023 {
					t.Fatalf("filling the store: %v", err)
				}
				break
			}
			if n > 10_000 {
				t.Fatal("the store never filled")
			}
		}
	}
	return name
}

// An issue is never accepted while the JetStream store has no room to record it. The
// first issue after the store filled is accepted (its commands leave before its record
// is stored, and its Ghost may run them live); its record refused, Mirage refuses the
// following issues with 1501, before any of their commands leave, until the store takes
// writes again. Before, every issue was accepted, its record, commands and reports all
// refused: the client waited for a report that never came, and a Mirage restart forgot
// the intent.
func TestIssueRefusedWhileTheStoreHasNoRoom(t *testing.T) {
	const ghostID = "edge-full"
	env := testenv.New(t, testenv.MaxStore(64<<20))
	env.StartMirage(mirage.Config{EventsMaxBytes: bus.MinEventsMaxBytes})
	env.StartGhost(ghostID)
	client := env.Client()
	js := env.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Every command that reaches the Ghost's subject, stored or live.
	var mu sync.Mutex
	sent := map[string]bool{}
	sub, err := env.Conn("watch commands").Subscribe(subjects.Command(ghostID), func(msg *nats.Msg) {
		var cmd bus.Command
		if bus.Decode(msg.Data, &cmd) == nil {
			mu.Lock()
			sent[cmd.IntentID] = true
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	fill := fillStore(t, ctx, js)

	first := testenv.NewIssue(ghostID, "seed.flow", "echo", map[string]string{"message": "hi"}, 5*time.Second)
	if _, err := client.Issue(ctx, first); err != nil {
		t.Logf("first issue after the store filled: %v", err)
	}

	second := testenv.NewIssue(ghostID, "seed.flow", "echo", map[string]string{"message": "hi"}, 5*time.Second)
	reply, err := client.Issue(ctx, second)
	var perr *bus.Error
	if !errors.Is(err, mirage.ErrRejected) || !errors.As(err, &perr) || perr.Code != bus.CodeBusy {
		t.Fatalf("issue while the store has no room: reply %+v, err %v; want rejected 1501", reply, err)
	}
	if !strings.Contains(perr.Message, "no room") {
		t.Errorf("refusal %q does not say the store has no room", perr.Message)
	}
	if _, err := mirage.ReadIntent(ctx, js, second.IntentID); !errors.Is(err, mirage.ErrIntentNotFound) {
		t.Errorf("refused intent read back: %v, want not found", err)
	}
	time.Sleep(200 * time.Millisecond) // a command sent would have reached the watch by now
	mu.Lock()
	leaked := sent[second.IntentID]
	mu.Unlock()
	if leaked {
		t.Fatal("a command of the refused issue was sent")
	}

	// Room again: the next issue is recorded first, accepted and runs.
	if err := js.DeleteStream(ctx, fill); err != nil {
		t.Fatal(err)
	}
	third := testenv.NewIssue(ghostID, "seed.flow", "echo", map[string]string{"message": "back"}, 10*time.Second)
	if r := env.Run(client, third); r.Phase != bus.PhaseSatisfied {
		t.Fatalf("issue once the store has room: phase %s (%s), want satisfied", r.Phase, r.Summary)
	}
	if _, err := mirage.ReadIntent(ctx, js, third.IntentID); err != nil {
		t.Fatalf("the intent accepted once the store has room is not recorded: %v", err)
	}
}

// A command the full store never took, for a Ghost that is offline, is not lost silently:
// its target ends timeout, and the report says the command was never stored, so the Ghost
// never got it (it was not online for the live copy). The report itself is stored once the
// store has room again.
func TestUnstoredCommandIsNamedInTheReport(t *testing.T) {
	const ghostID = "edge-away"
	env := testenv.New(t, testenv.MaxStore(64<<20))
	env.StartMirage(mirage.Config{EventsMaxBytes: bus.MinEventsMaxBytes})
	g := env.StartGhost(ghostID)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	client := env.Client()
	js := env.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fill := fillStore(t, ctx, js)

	is := testenv.NewIssue(ghostID, "seed.flow", "status", nil, time.Second)
	if _, err := client.Issue(ctx, is); err != nil {
		t.Fatalf("first issue after the store filled: %v", err)
	}
	time.Sleep(1500 * time.Millisecond) // past the intent's deadline: it ends timeout
	if err := js.DeleteStream(ctx, fill); err != nil {
		t.Fatal(err)
	}
	r := waitReport(t, client, is.IntentID, 20*time.Second)
	if len(r.Results) != 1 || r.Results[0].Outcome != bus.OutcomeTimeout || r.Results[0].Error == nil {
		t.Fatalf("report %+v, want one timeout result", r)
	}
	if msg := r.Results[0].Error.Message; !strings.Contains(msg, "never stored in EDGE_CMD") || !strings.Contains(msg, "insufficient resources") {
		t.Fatalf("timeout of a command the store refused says %q: not that it was never stored, nor why", msg)
	}
}
