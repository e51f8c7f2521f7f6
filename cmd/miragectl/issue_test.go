package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// runIssue runs 'miragectl issue' in process with args, its stdout read line by line as
// written: each line with when it came. It returns the lines, stderr and the error.
func runIssue(t *testing.T, url string, args ...string) (lines []timedLine, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pr, pw := io.Pipe()
	var errBuf bytes.Buffer
	c := newIssue()
	c.SetArgs(append([]string{"--server", url}, args...))
	c.SetOut(pw)
	c.SetErr(&errBuf)
	c.SilenceUsage, c.SilenceErrors = true, true
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines = append(lines, timedLine{at: time.Now(), text: sc.Text()})
		}
	}()
	err = c.ExecuteContext(ctx)
	_ = pw.Close()
	wg.Wait()
	return lines, errBuf.String(), err
}

type timedLine struct {
	at   time.Time
	text string
}

func (l timedLine) String() string { return l.text }

// Human issue output comes target by target as results arrive, not all at the end: with
// a target that answers at once and one that never does (a Ghost down), the first one's
// line is out long before the timeout ends the intent, which then adds the other's line
// and the summary. What a pipe, an ssh session or cron sees, with no progress bar.
func TestIssueLinesComeAsResultsArrive(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirage(mirage.Config{ReportInterval: 50 * time.Millisecond})
	env.StartGhost("edge-fast")
	start := time.Now()
	lines, stderr, err := runIssue(t, env.URL, "--target", "edge-fast,edge-gone", "--timeout", "4s", "seed.flow", "status")
	end := time.Now()
	if err == nil {
		t.Fatalf("issue with a target that never answers succeeded; stderr %q", stderr)
	}
	if !strings.Contains(stderr, "not registered with Mirage: edge-gone") {
		t.Errorf("stderr %q: no note about edge-gone", stderr)
	}
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4 (two targets, no response, summary): %v", len(lines), lines)
	}
	fast, slow := lines[0], lines[1]
	if !strings.HasPrefix(fast.text, "edge-fast  success  0") || !strings.HasPrefix(slow.text, "edge-gone  timeout  -") {
		t.Fatalf("lines %q, %q; want edge-fast's success then edge-gone's timeout, in columns", fast.text, slow.text)
	}
	if d := fast.at.Sub(start); d > 2*time.Second {
		t.Errorf("edge-fast's line came %s after the start, only %s before the end", d, end.Sub(fast.at))
	}
	if !strings.HasPrefix(lines[2].text, "no response from: edge-gone") || !strings.Contains(lines[3].text, "(intent int_") {
		t.Errorf("last lines %q, %q; want the no-response line then the summary", lines[2].text, lines[3].text)
	}
}

// --json stays one JSON object: nothing is streamed before it.
func TestIssueJSONIsOneObject(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirage(mirage.Config{ReportInterval: 50 * time.Millisecond})
	env.StartGhost("edge-j1")
	env.StartGhost("edge-j2")
	lines, stderr, err := runIssue(t, env.URL, "--target", "edge-j1,edge-j2", "--timeout", "10s", "--json", "seed.flow", "status")
	if err != nil {
		t.Fatalf("%v; stderr %q", err, stderr)
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0].text, `{"type":"report"`) {
		t.Fatalf("--json printed %v, want one JSON object", lines)
	}
}

// A target that missed heartbeats (stale: stopped without a word, or cut off) is named
// in a note on stderr with how long Mirage has not heard from it, as an offline one is.
func TestIssueNotesAStaleTarget(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	var mu sync.Mutex
	var ahead time.Duration
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return time.Now().Add(ahead) }
	env.StartMirage(mirage.Config{Now: clock})
	ghostConn := env.ConnWith("ghost edge-q", bus.GhostRequests(), nats.NoReconnect())
	g := env.StartGhost("edge-q", testenv.Via(ghostConn))
	env.StartGhost("edge-ok", testenv.Tune(func(c *ghost.Config) { c.HeartbeatInterval = 50 * time.Millisecond }))
	// Cut off: no word from it since.
	ghostConn.Close()
	_ = g.Close()
	mu.Lock()
	ahead = 22 * time.Second // Mirage's clock: 22 s without a heartbeat
	mu.Unlock()
	time.Sleep(300 * time.Millisecond) // edge-ok beats on Mirage's new time
	_, stderr, _ := runIssue(t, env.URL, "--target", "edge-q,edge-ok", "--timeout", "1s", "--no-wait", "seed.flow", "status")
	if !strings.Contains(stderr, "note: edge-q last heard 2") || !strings.Contains(stderr, "its command waits for it, up to the timeout (1s)") {
		t.Fatalf("stderr %q: no note naming edge-q, last heard about 22s ago", stderr)
	}
	if strings.Contains(stderr, "edge-ok") {
		t.Fatalf("stderr %q names the Ghost that beats", stderr)
	}
}

// An issue Mirage cannot take now because its JetStream store has no room (1501, nothing
// run or recorded) exits 3, as infrastructure unavailable, not 2 as invalid input: the same
// issue may be sent again once the store has room.
func TestIssueRefusedForAFullStoreExitsUnavailable(t *testing.T) {
	env := testenv.New(t, testenv.Listen(), testenv.MaxStore(64<<20))
	env.StartMirage(mirage.Config{EventsMaxBytes: bus.MinEventsMaxBytes})
	env.StartGhost("edge-full")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := env.JetStream()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TEST_FILL", Subjects: []string{"testfill.>"}}); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{512 << 10, 1 << 10} {
		data := bytes.Repeat([]byte("x"), size)
		for n := 0; ; n++ {
			if _, err := js.Publish(ctx, "testfill.x", data); err != nil {
				break
			}
			if n > 10_000 {
				t.Fatal("the store never filled")
			}
		}
	}
	// The first issue after the store filled tells Mirage so (its record refused).
	_, _, _ = runIssue(t, env.URL, "--target", "edge-full", "--timeout", "1s", "--no-wait", "seed.flow", "status")
	_, stderr, err := runIssue(t, env.URL, "--target", "edge-full", "--timeout", "1s", "seed.flow", "status")
	if code := cli.ExitCode(err); code != cli.ExitUnavailable {
		t.Fatalf("issue on a full store: exit %d (%v), want %d", code, err, cli.ExitUnavailable)
	}
	if !strings.Contains(err.Error(), "no room") {
		t.Errorf("error %q (stderr %q) does not say the store has no room", err, stderr)
	}
}
