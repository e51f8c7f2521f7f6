package main

import (
	"bytes"
	"errors"
	"os"

	"github.com/pelletier/go-toml/v2"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
)

// planFile is a command plan in TOML:
//
//	target = "edge-*"          # default scope of the steps (else --target)
//	[[step]]
//	name = "plan"              # optional: names the step in the human output
//	seed = "seed.flow"         # seed and operation are required
//	operation = "step"
//	args = { name = "plan" }
//	blocking = true            # hold ghost_id::seed locks while the step runs
//	target = "edge-1"          # this step's own scope (optional)
type planFile struct {
	Target string     `toml:"target"`
	Steps  []planStep `toml:"step"`
}

type planStep struct {
	Name      string            `toml:"name"`
	Seed      string            `toml:"seed"`
	Operation string            `toml:"operation"`
	Args      map[string]string `toml:"args"`
	Target    string            `toml:"target"`
	Blocking  bool              `toml:"blocking"`
}

// readPlan reads a plan file; errors name the file and what is wrong.
func readPlan(path string) (string, []bus.PlanStep, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, cli.Invalid("--plan: %v", err)
	}
	var pf planFile
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pf); err != nil {
		var sme *toml.StrictMissingError
		if errors.As(err, &sme) {
			return "", nil, cli.Invalid("plan %s: unknown key: %s", path, sme.Errors[0].Key())
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return "", nil, cli.Invalid("plan %s:%d:%d: %v", path, row, col, de)
		}
		return "", nil, cli.Invalid("plan %s: %v", path, err)
	}
	if len(pf.Steps) == 0 {
		return "", nil, cli.Invalid("plan %s has no [[step]]", path)
	}
	steps := make([]bus.PlanStep, len(pf.Steps))
	for i, s := range pf.Steps {
		if s.Seed == "" || s.Operation == "" {
			return "", nil, cli.Invalid("plan %s: step %d needs seed and operation", path, i+1)
		}
		if s.Args == nil {
			s.Args = map[string]string{}
		}
		steps[i] = bus.PlanStep{Name: s.Name, SeedSelector: s.Seed, Operation: s.Operation, Args: s.Args, TargetScope: s.Target, Blocking: s.Blocking}
	}
	return pf.Target, steps, nil
}

// planNames are the names of a plan's steps by index ("" for a step without one), for the
// step headers of the human output (printReportSteps).
func planNames(steps []bus.PlanStep) []string {
	names := make([]string, len(steps))
	for i, s := range steps {
		names[i] = s.Name
	}
	return names
}
