package test

import (
	"context"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// An intent that ended but whose terminal report is not stored yet is re-sent: it must
// be accepted again, not adopted and ended a second time.
func TestIssueResentWhileItsTerminalReportIsPendingIsNotTakenUpAgain(t *testing.T) {
	const ghostID = "edge-rv"
	env := testenv.New(t)
	m := env.StartMirage(mirage.Config{})
	env.StartGhost(ghostID)
	client := env.Client()
	js := env.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acks := watchAcks(t, env, ghostID)
	_, original := pauseReports(t, ctx, js)
	is := testenv.NewIssue(ghostID, "seed.kv", "incr", map[string]string{"key": "z"}, 10*time.Second)
	if _, err := client.Issue(ctx, is); err != nil {
		t.Fatal(err)
	}
	select {
	case <-acks:
	case <-ctx.Done():
		t.Fatal("no ack")
	}
	time.Sleep(200 * time.Millisecond)
	if _, err := client.Issue(ctx, is); err != nil {
		t.Fatalf("re-send: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := js.UpdateStream(ctx, original); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	got := reportsOf(t, js, is.IntentID)
	n := 0
	for _, r := range got {
		if bus.Terminal(r.Phase) {
			n++
			t.Logf("terminal report %s %s %s", r.MessageID, r.Phase, r.Summary)
		}
	}
	if n != 1 {
		t.Fatalf("%d terminal reports stored, want 1", n)
	}
}
