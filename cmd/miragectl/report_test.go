package main

import (
	"context"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// A wait for a terminal report ends 30 s after the intent's deadline as its record gives
// it (or after now, when that deadline has passed), after --timeout when given, and,
// without a record, 30 s after the longest an intent may last from its latest report.
func TestWaitUntilFollowsTheIntentsDeadline(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("edge-u")
	client := env.Client()
	ctx := context.Background()
	reply, err := client.Issue(ctx, testenv.NewIssue("edge-u", "seed.flow", "sleep", map[string]string{"ms": "10"}, 90*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := client.Intent(ctx, reply.IntentID)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.UnixMilli(rec.DeadlineMS)
	if d := deadline.Sub(time.UnixMilli(rec.CreatedMS)); d != 90*time.Second {
		t.Fatalf("record's deadline %s after its creation, want 90s", d)
	}
	latest := &bus.Report{Header: bus.Header{TimestampMS: rec.CreatedMS}, IntentID: reply.IntentID}
	now := time.UnixMilli(rec.CreatedMS)
	for _, c := range []struct {
		name   string
		latest *bus.Report
		limit  time.Duration
		now    time.Time
		want   time.Time
	}{
		{"before the deadline", latest, 0, now, deadline.Add(waitGrace)},
		{"past the deadline", latest, 0, deadline.Add(time.Hour), deadline.Add(time.Hour + waitGrace)},
		{"--timeout", latest, 5 * time.Second, now, now.Add(5 * time.Second)},
		{"no record", &bus.Report{Header: bus.Header{TimestampMS: rec.CreatedMS}, IntentID: "int_none"}, 0, now,
			now.Add(time.Duration(bus.MaxTimeout)*time.Millisecond + waitGrace)},
	} {
		if got := waitUntil(ctx, client, c.latest, c.limit, c.now); !got.Equal(c.want) {
			t.Errorf("%s: waits until %s, want %s", c.name, got, c.want)
		}
	}
}
