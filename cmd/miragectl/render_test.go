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
