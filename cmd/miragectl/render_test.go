package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
)

// The exit column shows "-" wherever no process gave an exit code, and no line ends in
// padding (a pending result has no output).
func TestPrintReportExitColumnAndPadding(t *testing.T) {
	r := &bus.Report{IntentID: "int_x", Summary: "failed", Results: []bus.TargetResult{
		{GhostID: "a", Outcome: bus.OutcomeSuccess, ExitCode: 0, Stdout: "ok"},
		{GhostID: "b", Outcome: bus.OutcomeError, ExitCode: 2, Stderr: "bad"},
		{GhostID: "c", Outcome: bus.OutcomeExpired, ExitCode: -1, Error: &bus.Error{Code: 1600, Class: "expired", Message: "late"}},
		{GhostID: "d", Outcome: bus.OutcomeError, ExitCode: -1, Error: &bus.Error{Code: 1300, Class: "semantic", Message: "unknown seed"}},
		{GhostID: "e", Outcome: bus.OutcomePending},
	}}
	var buf bytes.Buffer
	if err := printReport(&buf, r); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "0", "b": "2", "c": "-", "d": "-", "e": "-"}
	for _, line := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		if strings.HasSuffix(line, " ") {
			t.Errorf("line %q ends in spaces", line)
		}
		f := strings.Fields(line)
		if w, ok := want[f[0]]; ok && f[2] != w {
			t.Errorf("line %q: exit column %q, want %q", line, f[2], w)
		}
	}
}

// issue --jsonl names the step of every result, step 0 included.
func TestResultLineAlwaysHasStep(t *testing.T) {
	b, err := json.Marshal(resultLine{IntentID: "int_x", TargetResult: bus.TargetResult{GhostID: "a", Step: 0}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"step":0`) {
		t.Fatalf("%s has no step", b)
	}
}

// A seed's output cannot drive the operator's terminal: escape sequences, bells, DEL, C1
// controls and bidirectional overrides are shown escaped; ordinary text is untouched.
func TestFirstLineEscapesTerminalControls(t *testing.T) {
	for _, tc := range []struct{ stdout, want string }{
		{"\x1b[31mRED\x1b]0;title\a", `\x1b[31mRED\x1b]0;title\x07`},
		{"\x1b[2Jx", `\x1b[2Jx`},
		{"a\tb\x7f\u0085c", `a\x09b\x7f\x85c`},
		{"abc\u202edef", `abc\u202edef`},
		{"plain ünïcode ✓", "plain ünïcode ✓"},
	} {
		if got := firstLine(bus.TargetResult{Stdout: tc.stdout}); got != tc.want {
			t.Errorf("firstLine(%q) = %q, want %q", tc.stdout, got, tc.want)
		}
	}
	res := bus.TargetResult{Error: &bus.Error{Code: bus.CodeRuntime, Class: bus.ClassRuntime, Message: "boom\x1b[2J"}}
	if got := firstLine(res); got != `[1400 runtime] boom\x1b[2J` {
		t.Errorf("error message shown as %q", got)
	}
}

// A plan's report puts a header line above each step's target lines, naming the step when
// its name is known, so that a Ghost listed once per step reads as such; results arrive in
// any order. A report of one step has no header.
func TestPrintReportHeadsEachPlanStep(t *testing.T) {
	r := &bus.Report{IntentID: "int_p", Summary: "failed: 0/3 succeeded, 1 error, 2 skipped", Results: []bus.TargetResult{
		{Step: 0, GhostID: "edge-1", Outcome: bus.OutcomeError, ExitCode: 1, Stderr: "boom"},
		{Step: 2, GhostID: "edge-1", Outcome: bus.OutcomeSkipped, ExitCode: -1},
		{Step: 1, GhostID: "edge-1", Outcome: bus.OutcomeSkipped, ExitCode: -1},
	}}
	steps := []bus.PlanStep{{Name: "init"}, {}, {Name: "apply"}}
	for _, c := range []struct {
		names []string
		want  []string
	}{
		{planNames(steps), []string{"step 1/3 init:", "edge-1  error    1  boom", "step 2/3:", "edge-1  skipped  -", "step 3/3 apply:", "edge-1  skipped  -", r.Summary + "  (intent int_p)"}},
		{nil, []string{"step 1/3:", "edge-1  error    1  boom", "step 2/3:", "edge-1  skipped  -", "step 3/3:", "edge-1  skipped  -", r.Summary + "  (intent int_p)"}},
	} {
		var buf bytes.Buffer
		if err := printReportSteps(&buf, r, c.names); err != nil {
			t.Fatal(err)
		}
		if got := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n"); strings.Join(got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("names %q: printed\n%s\nwant\n%s", c.names, strings.Join(got, "\n"), strings.Join(c.want, "\n"))
		}
	}
	one := &bus.Report{IntentID: "int_o", Summary: "satisfied", Results: []bus.TargetResult{{GhostID: "a", Outcome: bus.OutcomeSuccess, Stdout: "ok"}}}
	var buf bytes.Buffer
	if err := printReport(&buf, one); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "step ") {
		t.Errorf("a report of one step printed a step header:\n%s", buf.String())
	}
}
