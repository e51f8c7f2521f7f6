package test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// The stock nats CLI (natscli v0.5.0) reads edgectl's state during a run as plain JSON:
// the streams and KV buckets are listed, a Ghost's registry record and a live event parse
// as JSON, and the event carries its Nats-Msg-Id and traceparent headers.
func TestNATSCLIShowsLegibleJSON(t *testing.T) {
	natsBin := testenv.NATSCLI(t)
	env := testenv.New(t, testenv.Listen())
	m := env.StartMirage(mirage.Config{})
	env.StartGhost("edge-cli")
	testenv.Eventually(t, 10*time.Second, "edge-cli to register", func() bool { _, ok := m.Fleet().Get("edge-cli"); return ok })
	// A HOME of its own: no nats context of the machine's user applies.
	home := []string{"HOME=" + t.TempDir(), "XDG_CONFIG_HOME=" + t.TempDir()}
	nats := func(args ...string) string {
		t.Helper()
		r := execRun(t, natsBin, home, append([]string{"--server", env.URL}, args...)...)
		if r.code != 0 {
			t.Fatalf("nats %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
		}
		return r.stdout
	}

	var streams []string
	if err := json.Unmarshal([]byte(nats("stream", "ls", "--names", "--json")), &streams); err != nil {
		t.Fatalf("nats stream ls --json: %v", err)
	}
	for _, want := range []string{bus.StreamCommands, bus.StreamEvents, bus.StreamReports} {
		if !slices.Contains(streams, want) {
			t.Errorf("nats stream ls lists %v, without %s", streams, want)
		}
	}
	if table := nats("stream", "ls"); !strings.Contains(table, "edgectl events, Ghost to Mirage") {
		t.Errorf("nats stream ls does not show the streams' descriptions:\n%s", table)
	}
	buckets := nats("kv", "ls")
	for _, want := range []string{bus.BucketGhosts, bus.BucketIntents} {
		if !strings.Contains(buckets, want) {
			t.Errorf("nats kv ls does not list %s:\n%s", want, buckets)
		}
	}
	var rec mirage.GhostRecord
	if err := json.Unmarshal([]byte(nats("kv", "get", bus.BucketGhosts, "edge-cli", "--raw")), &rec); err != nil || rec.GhostID != "edge-cli" {
		t.Fatalf("nats kv get edge_ghosts edge-cli --raw: %+v, %v", rec, err)
	}

	sub := testenv.Start(t, natsBin, "--server", env.URL, "sub", "evt.*", "--count", "1")
	testenv.Eventually(t, 10*time.Second, "nats sub to subscribe", func() bool { return strings.Contains(sub.Output(), "Subscribing on evt.*") })
	is := testenv.NewIssue("edge-cli", "seed.flow", "echo", map[string]string{"message": "seen by nats sub"}, 10*time.Second)
	if r := env.Run(env.Client(), is); r.Phase != bus.PhaseSatisfied {
		t.Fatal(r.Summary)
	}
	if code := sub.Wait(10 * time.Second); code != 0 {
		t.Fatalf("nats sub --count 1 exited %d:\n%s", code, sub.Output())
	}
	out := sub.Output()
	var ev bus.Event
	var body string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "{") {
			body = strings.TrimSpace(line)
		}
	}
	if err := json.Unmarshal([]byte(body), &ev); err != nil || ev.Type != bus.TypeEvent || ev.IntentID != is.IntentID || ev.Result.Stdout != "seen by nats sub" {
		t.Fatalf("nats sub 'evt.*' printed no event of the intent as JSON (%v):\n%s", err, out)
	}
	for _, h := range []string{bus.HeaderMsgID + ": " + ev.EventID, bus.HeaderTraceparent + ": 00-" + ev.TraceID} {
		if !strings.Contains(out, h) {
			t.Errorf("nats sub output lacks the header %q:\n%s", h, out)
		}
	}
}
