package test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// The human output of a plan heads each step's target lines with "step N/M:", so that a
// Ghost listed once per step reads as such; 'issue' names the steps from its plan file, as
// its lines arrive, and 'report' from the intent's record ("step 1/2 init:"). --json and
// --jsonl are unchanged (one report, one result a line).
func TestPlanOutputHeadsEachStep(t *testing.T) {
	env := testenv.New(t, testenv.Listen())
	env.StartMirage(mirage.Config{})
	env.StartGhost("edge-p")
	plan := filepath.Join(t.TempDir(), "plan.toml")
	if err := os.WriteFile(plan, []byte(`target = "edge-p"
[[step]]
name = "init"
seed = "seed.flow"
operation = "step"
args = { name = "init" }
[[step]]
seed = "seed.flow"
operation = "step"
args = { name = "apply" }
`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := miragectl(t, env.URL, "issue", "--plan", plan)
	if r.code != 0 || !regexp.MustCompile(`(?m)^step 1/2 init:\nedge-p +success +0 +init.*\nstep 2/2:\nedge-p +success +0 +apply`).MatchString(r.stdout) {
		t.Fatalf("issue --plan: exit %d, stdout %q; want a step header above each step's line", r.code, r.stdout)
	}
	id := regexp.MustCompile(`int_\w+`).FindString(r.stdout)
	r = miragectl(t, env.URL, "report", id)
	if r.code != 0 || !regexp.MustCompile(`(?m)^step 1/2 init:\nedge-p +success +0 +init.*\nstep 2/2:\nedge-p +success`).MatchString(r.stdout) {
		t.Fatalf("report: exit %d, stdout %q; want step headers, the first named init", r.code, r.stdout)
	}
	r = miragectl(t, env.URL, "report", id, "--json")
	if r.code != 0 || strings.Contains(r.stdout, "step 1/2") {
		t.Fatalf("report --json: exit %d, stdout %q; want the envelope alone", r.code, r.stdout)
	}
}
