package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// startFleet starts Mirage and twelve Ghosts edge-01..edge-12 with two label sets: role=db
// (odd numbers) or role=web (even), site=lab (01-06) or site=prod (07-12). It returns once
// Mirage has registered every one.
func startFleet(t *testing.T, env *testenv.Env) *mirage.Mirage {
	t.Helper()
	m := env.StartMirage(mirage.Config{})
	for i := 1; i <= 12; i++ {
		role, site := "db", "lab"
		if i%2 == 0 {
			role = "web"
		}
		if i > 6 {
			site = "prod"
		}
		env.StartGhost(fmt.Sprintf("edge-%02d", i), testenv.Labels(map[string]string{"role": role, "site": site}), testenv.Seeds("seed.flow"))
	}
	testenv.Eventually(t, 10*time.Second, "twelve registered Ghosts", func() bool { return len(m.Fleet().All()) == 12 })
	return m
}

func edges(nums ...int) []string {
	out := make([]string, len(nums))
	for i, n := range nums {
		out[i] = fmt.Sprintf("edge-%02d", n)
	}
	return out
}

// Every scope form, end to end through Mirage: the resolved targets are what the issue
// reply, the stored intent record and the report name; a scope that matches no registered
// Ghost is refused with 1300 on target_scope.
func TestTargetScopes(t *testing.T) {
	env := testenv.New(t)
	m := startFleet(t, env)
	client := env.Client()
	tests := []struct {
		scope   string
		want    []string // nil: refused
		reason  string   // part of the refusal
		timeout time.Duration
	}{
		{scope: "edge-03", want: edges(3)},
		{scope: "edge-07,edge-02", want: edges(2, 7)},
		{scope: "edge-1*", want: edges(10, 11, 12)},
		{scope: "edge-?1", want: edges(1, 11)},
		{scope: "role=db", want: edges(1, 3, 5, 7, 9, 11)},
		{scope: "role=db,site=lab", want: edges(1, 3, 5)},
		{scope: "all", want: edges(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)},
		// An unregistered explicit id may be a headless Ghost: accepted, then timeout.
		{scope: "edge-04,headless-9", want: append(edges(4), "headless-9"), timeout: 1500 * time.Millisecond},
		{scope: "role=nosuch", reason: "no registered ghost matches role=nosuch"},
		{scope: "role=db,site=mars", reason: "labels in use: role=db"},
		{scope: "db-*", reason: "no registered ghost matches db-*; registered: edge-01"},
	}
	for _, tt := range tests {
		t.Run(tt.scope, func(t *testing.T) {
			timeout := cmp(tt.timeout, 10*time.Second)
			is := testenv.NewIssue(tt.scope, "seed.flow", "status", nil, timeout)
			ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
			defer cancel()
			reply, err := client.Issue(ctx, is)
			if tt.want == nil {
				var perr *bus.Error
				if !errors.Is(err, mirage.ErrRejected) || !errors.As(err, &perr) {
					t.Fatalf("issue to %q: %v, want a rejection", tt.scope, err)
				}
				if perr.Code != bus.CodeSemantic || perr.Field != "target_scope" || !strings.Contains(perr.Message, tt.reason) {
					t.Fatalf("rejection %d on %q: %s; want 1300 on target_scope naming %q", perr.Code, perr.Field, perr.Message, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("issue to %q: %v", tt.scope, err)
			}
			if !slices.Equal(reply.Targets, tt.want) {
				t.Fatalf("reply targets %v, want %v", reply.Targets, tt.want)
			}
			rec, err := m.Intent(ctx, is.IntentID)
			if err != nil || !slices.Equal(rec.Targets, tt.want) {
				t.Fatalf("stored intent targets %v (%v), want %v", rec.Targets, err, tt.want)
			}
			rep, err := client.WaitTerminal(ctx, is.IntentID)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range rep.Results {
				got = append(got, r.GhostID)
				wantOutcome := bus.OutcomeSuccess
				if r.GhostID == "headless-9" {
					wantOutcome = bus.OutcomeTimeout
				}
				if r.Outcome != wantOutcome {
					t.Errorf("%s: outcome %s, want %s", r.GhostID, r.Outcome, wantOutcome)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("report results for %v, want %v", got, tt.want)
			}
		})
	}
}

func cmp(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// run is one finished miragectl process.
type run struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// miragectl runs the real binary against url and waits for it (at most 60 s).
func miragectl(t *testing.T, url string, args ...string) run {
	t.Helper()
	bin, _ := testenv.Binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "--server", url)...)
	cmd.Env = append(os.Environ(), "NATS_URL=", "EDGE_NKEY=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := run{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("miragectl %v: %v", args, err)
	}
	t.Logf("miragectl %s: exit %d in %s\nstdout:\n%sstderr:\n%s", strings.Join(args, " "), r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
	return r
}

// jsonLines decodes every stdout line as one JSON object into a T.
func jsonLines[T any](t *testing.T, stdout string) []T {
	t.Helper()
	var out []T
	sc := bufio.NewScanner(strings.NewReader(stdout))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("stdout line is not one JSON object: %v: %q", err, sc.Text())
		}
		out = append(out, v)
	}
	return out
}

// The operator output of issue, intents and report, from the real binary against a fleet
// of twelve Ghosts: JSONL, JSON and human forms parsed, exit codes checked.
func TestFleetCLIOutput(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	startFleet(t, env)
	testenv.Binaries(t)
	db := edges(1, 3, 5, 7, 9, 11)

	// --jsonl: one line per db Ghost, each a result of the same intent, nothing else.
	r := miragectl(t, env.URL, "issue", "--target", "role=db", "seed.flow", "status", "--jsonl")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("issue --jsonl: exit %d, stderr %q", r.code, r.stderr)
	}
	type line struct {
		IntentID string `json:"intent_id"`
		bus.TargetResult
	}
	lines := jsonLines[line](t, r.stdout)
	var got []string
	for _, l := range lines {
		got = append(got, l.GhostID)
		if l.IntentID == "" || l.IntentID != lines[0].IntentID || l.Outcome != bus.OutcomeSuccess || l.CommandID == "" || l.EventID == "" || l.Stdout == "" {
			t.Errorf("jsonl line %+v", l)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, db) {
		t.Fatalf("jsonl lines for %v, want one per db Ghost %v", got, db)
	}
	jsonlIntent := lines[0].IntentID

	// --json: exactly one object, the terminal report.
	r = miragectl(t, env.URL, "issue", "--target", "role=web,site=prod", "seed.flow", "echo", "message=hi", "--json")
	reps := jsonLines[bus.Report](t, r.stdout)
	if r.code != 0 || len(reps) != 1 {
		t.Fatalf("issue --json: exit %d, %d objects", r.code, len(reps))
	}
	if rep := reps[0]; rep.Type != bus.TypeReport || rep.Phase != bus.PhaseSatisfied || rep.Counts != (bus.Counts{Targets: 3, Success: 3}) || len(rep.Results) != 3 {
		t.Fatalf("issue --json report %+v", rep)
	}
	jsonIntent := reps[0].IntentID

	// Human output with a silent target: exit 1 and the "no response from" line.
	r = miragectl(t, env.URL, "issue", "--target", "edge-02,nobody-1", "--timeout", "1s", "seed.flow", "status")
	if r.code != 1 || !strings.Contains(r.stdout, "no response from: nobody-1\n") || !strings.Contains(r.stdout, "failed: 1/2 succeeded, 1 timeout") {
		t.Fatalf("issue with a silent target: exit %d, stdout %q", r.code, r.stdout)
	}
	if !strings.Contains(r.stderr, "note: not registered with Mirage: nobody-1;") || strings.Contains(r.stderr, "edge-02") {
		t.Fatalf("issue with an unregistered target: stderr %q, want a note naming nobody-1 alone", r.stderr)
	}

	// Refusals are exit 2 with the reason on stderr.
	for _, scope := range []string{"role=nosuch", "nomatch-*"} {
		r = miragectl(t, env.URL, "issue", "--target", scope, "seed.flow", "status")
		if r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, "no registered ghost matches "+scope) {
			t.Fatalf("issue to %s: exit %d, stderr %q", scope, r.code, r.stderr)
		}
	}

	// intents --json: newest first, counts of the finished intents.
	r = miragectl(t, env.URL, "intents", "--json")
	var intents []struct {
		IntentID    string     `json:"intent_id"`
		Phase       string     `json:"phase"`
		Counts      bus.Counts `json:"counts"`
		CreatedMS   int64      `json:"created_ms"`
		FinishedMS  int64      `json:"finished_ms"`
		TargetScope string     `json:"target_scope"`
		Seed        string     `json:"seed"`
		Operation   string     `json:"operation"`
		Summary     string     `json:"summary"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &intents); err != nil || r.code != 0 {
		t.Fatalf("intents --json: exit %d, %v", r.code, err)
	}
	if len(intents) != 3 {
		t.Fatalf("intents --json lists %d intents, want 3", len(intents))
	}
	if intents[1].IntentID != jsonIntent || intents[2].IntentID != jsonlIntent {
		t.Fatalf("intents not newest first: %s, %s, %s", intents[0].IntentID, intents[1].IntentID, intents[2].IntentID)
	}
	if i := intents[2]; i.Phase != bus.PhaseSatisfied || i.Counts.Success != 6 || i.TargetScope != "role=db" || i.Seed != "seed.flow" || i.Operation != "status" || i.FinishedMS < i.CreatedMS || i.Summary == "" {
		t.Fatalf("intents --json entry %+v", i)
	}
	if i := intents[0]; i.Phase != bus.PhaseFailed || i.Counts.Timeout != 1 || i.Counts.Success != 1 {
		t.Fatalf("intents --json entry %+v", i)
	}
	r = miragectl(t, env.URL, "intents", "--limit", "1")
	if out := strings.Split(strings.TrimSpace(r.stdout), "\n"); r.code != 0 || len(out) != 2 || strings.Join(strings.Fields(out[0]), " ") != "INTENT PHASE TARGETS SUCCESS ERROR TIMEOUT EXPIRED SKIPPED CREATED SEED OPERATION" || !strings.HasPrefix(out[1], intents[0].IntentID) {
		t.Fatalf("intents --limit 1: exit %d, %q", r.code, r.stdout)
	}

	// An open intent: intents shows it in progress with counts from its report, and report
	// --watch --json follows it to the terminal report, one envelope per line.
	r = miragectl(t, env.URL, "issue", "--target", "role=db,site=lab", "--no-wait", "--json", "seed.flow", "sleep", "ms=1500")
	var accepted struct {
		IntentID string `json:"intent_id"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &accepted); err != nil || accepted.IntentID == "" {
		t.Fatalf("issue --no-wait --json: %q (%v)", r.stdout, err)
	}
	r = miragectl(t, env.URL, "intents", "--json", "--limit", "1")
	if err := json.Unmarshal([]byte(r.stdout), &intents); err != nil || len(intents) != 1 {
		t.Fatalf("intents --json --limit 1: %q (%v)", r.stdout, err)
	}
	if i := intents[0]; i.IntentID != accepted.IntentID || bus.Terminal(i.Phase) || i.Counts.Targets != 3 || i.Counts.Pending != 3 || i.FinishedMS != 0 {
		t.Fatalf("open intent listed as %+v", i)
	}
	r = miragectl(t, env.URL, "report", accepted.IntentID, "--watch", "--json")
	watched := jsonLines[bus.Report](t, r.stdout)
	if r.code != 0 || len(watched) < 2 {
		t.Fatalf("report --watch --json: exit %d, %d reports; want the open one(s) then the terminal one", r.code, len(watched))
	}
	for i, rep := range watched {
		last := i == len(watched)-1
		if rep.IntentID != accepted.IntentID || bus.Terminal(rep.Phase) != last {
			t.Errorf("watched report %d of %d: intent %s phase %s", i+1, len(watched), rep.IntentID, rep.Phase)
		}
	}
	if final := watched[len(watched)-1]; final.Phase != bus.PhaseSatisfied || final.Counts.Success != 3 {
		t.Fatalf("terminal report %s", final.Summary)
	}

	// report --watch, human, on a finished intent: the report itself.
	r = miragectl(t, env.URL, "report", jsonlIntent, "--watch")
	if r.code != 0 || !strings.Contains(r.stdout, "satisfied: 6/6 succeeded  (intent "+jsonlIntent+")") {
		t.Fatalf("report --watch on a finished intent: exit %d, %q", r.code, r.stdout)
	}

	// An intent without any report fails fast, exit 2, rather than waiting forever.
	for _, flag := range []string{"--wait", "--watch"} {
		r = miragectl(t, env.URL, "report", "nope-123", flag)
		if r.code != 2 || r.took > 5*time.Second || !strings.Contains(r.stderr, "no report for intent nope-123") {
			t.Fatalf("report nope-123 %s: exit %d after %s, stderr %q", flag, r.code, r.took, r.stderr)
		}
	}

	// ghosts: sorted by id, last seen as "Ns ago".
	r = miragectl(t, env.URL, "ghosts")
	rows := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(rows) != 13 {
		t.Fatalf("ghosts: exit %d, %d lines", r.code, len(rows))
	}
	for i, row := range rows[1:] {
		f := strings.Fields(row)
		if f[0] != fmt.Sprintf("edge-%02d", i+1) || f[1] != mirage.StatusOnline || !strings.HasSuffix(f[3], "s") || f[4] != "ago" {
			t.Errorf("ghosts row %d: %q", i+1, row)
		}
	}
}
