package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
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
		if got := waitUntil(ctx, client, c.latest, c.limit, c.now, 0).until; !got.Equal(c.want) {
			t.Errorf("%s: waits until %s, want %s", c.name, got, c.want)
		}
	}
}

// A wait that gives up blames Mirage (exit 3) only once it is 30 s past the intent's
// deadline; a --timeout that ends it sooner says the intent may still be running, gives its
// deadline and how to follow it, and exits 1, as an interrupted wait does.
func TestWaitEndedBlamesMirageOnlyPastTheDeadline(t *testing.T) {
	deadline := time.Date(2025, 1, 2, 23, 10, 0, 0, time.Local)
	hint := "miragectl report int_x --wait"
	for _, c := range []struct {
		name     string
		w        waitBound
		now      time.Time
		code     int
		want     []string
		notWants []string
	}{
		{"--timeout before the deadline", waitBound{until: deadline.Add(-time.Minute), deadline: deadline, limit: 2 * time.Second, recorded: true}, deadline.Add(-time.Minute), cli.ExitNotSatisfied,
			[]string{"intent int_x has not ended by --timeout 2s", "may still be running", "its deadline is 23:10:00", hint}, []string{"Mirage running"}},
		{"--timeout just past the deadline", waitBound{until: deadline.Add(5 * time.Second), deadline: deadline, limit: 2 * time.Second, recorded: true}, deadline.Add(5 * time.Second), cli.ExitNotSatisfied,
			[]string{"has not ended", "its deadline passed at 23:10:00", hint}, []string{"Mirage running"}},
		{"--timeout 30 s past the deadline", waitBound{until: deadline.Add(waitGrace), deadline: deadline, limit: 2 * time.Second, recorded: true}, deadline.Add(waitGrace), cli.ExitUnavailable,
			[]string{"no terminal report of intent int_x by --timeout", "is a Mirage running?", hint}, nil},
		{"default bound", waitBound{until: deadline.Add(waitGrace), deadline: deadline, recorded: true}, deadline.Add(waitGrace), cli.ExitUnavailable,
			[]string{"30 s after the intent's deadline", "is a Mirage running?", hint}, nil},
	} {
		err := c.w.ended("int_x", c.now, hint)
		if got := cli.ExitCode(err); got != c.code {
			t.Errorf("%s: exit %d, want %d (%v)", c.name, got, c.code, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", c.name, err, w)
			}
		}
		for _, w := range c.notWants {
			if strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q says %q", c.name, err, w)
			}
		}
	}
}

// A wait for a terminal report counts the intent's deadline (Mirage's clock) against the
// NATS server's clock, not this machine's: on a machine 5 minutes ahead, a 90-second intent
// is waited for until 30 s past its deadline (it was given up on 30 s into it, blaming
// Mirage), and on one 5 minutes behind, not for 5 minutes more.
func TestWaitUntilCountsTheDeadlineOnTheServersClock(t *testing.T) {
	env := testenv.New(t)
	env.StartMirage(mirage.Config{})
	env.StartGhost("edge-s")
	client := env.Client()
	ctx := context.Background()
	reply, err := client.Issue(ctx, testenv.NewIssue("edge-s", "seed.flow", "sleep", map[string]string{"ms": "10"}, 90*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := client.Intent(ctx, reply.IntentID)
	if err != nil {
		t.Fatal(err)
	}
	latest := &bus.Report{Header: bus.Header{TimestampMS: rec.CreatedMS}, IntentID: reply.IntentID}
	for _, skew := range []time.Duration{5 * time.Minute, -5 * time.Minute} {
		real := time.Now()
		w := waitBoundFor(ctx, client, latest, 0, real.Add(skew))
		left := w.until.Sub(real.Add(skew)) // how long this machine will wait
		want := time.UnixMilli(rec.DeadlineMS).Add(waitGrace).Sub(real)
		if d := left - want; d < -2*time.Second || d > 2*time.Second {
			t.Errorf("this clock %s off the server's: waits %s, want about %s (30 s past the deadline)", skew, left.Round(time.Second), want.Round(time.Second))
		}
	}
}

// 'intents' says how long ago each intent was created on the server's clock, which Mirage
// stamped created_ms on: on a machine 5 minutes ahead, an intent just issued read "5m ago".
func TestIntentsAgeIsOnTheServersClock(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirage(mirage.Config{})
	env.StartGhost("edge-i")
	env.Run(env.Client(), testenv.NewIssue("edge-i", "seed.flow", "status", nil, 5*time.Second))
	localNow = func() time.Time { return time.Now().Add(5 * time.Minute) }
	defer func() { localNow = time.Now }()
	var out, errOut strings.Builder
	c := newIntents()
	c.SetArgs([]string{"--server", env.URL})
	c.SetOut(&out)
	c.SetErr(&errOut)
	c.SilenceUsage, c.SilenceErrors = true, true
	if err := c.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("intents: %v (%s)", err, errOut.String())
	}
	if !strings.Contains(out.String(), "s ago") || strings.Contains(out.String(), "m ago") {
		t.Fatalf("intents printed\n%s\nwant the intent created seconds ago", out.String())
	}
}
