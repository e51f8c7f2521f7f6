package ghost

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/edgectl/edgectl/bus"
)

// testSeed is a seed whose operations are plain functions; it counts its executions.
type testSeed struct {
	id    string
	ops   []bus.OperationInfo
	run   func(ctx context.Context, req *bus.SeedExecute) (bus.Result, error)
	calls atomic.Int64
	// running counts executions still in progress, so a test can wait for a seed that
	// ignored its context before it ends (goleak).
	running atomic.Int64
}

func (s *testSeed) Info() bus.SeedInfo {
	return bus.SeedInfo{ID: s.id, Name: s.id, Description: "test seed", Operations: s.ops}
}

func (s *testSeed) Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error) {
	s.calls.Add(1)
	s.running.Add(1)
	defer s.running.Add(-1)
	if s.run == nil {
		return bus.Result{Status: "ok", Stdout: req.Operation + " done"}, nil
	}
	return s.run(ctx, req)
}

func param(name string, required bool, pattern string) bus.ParamInfo {
	return bus.ParamInfo{Name: name, Required: required, Pattern: pattern}
}

func op(name string, params ...bus.ParamInfo) bus.OperationInfo {
	if params == nil {
		params = []bus.ParamInfo{}
	}
	return bus.OperationInfo{Name: name, Description: name, Idempotent: true, Params: params}
}

// registrySeed declares the params the Resolve table exercises.
func registrySeed() *testSeed {
	return &testSeed{id: "test.registry", ops: []bus.OperationInfo{
		op("count", param("n", true, `[0-9]+`)),
		op("greet", param("name", true, `[a-z]+`), param("greeting", false, `hello|hi`)),
		op("note", param("text", false, "")),
		op("none"),
	}}
}

func TestRegistryResolve(t *testing.T) {
	seed := registrySeed()
	r := NewRegistry()
	if err := r.Add(seed); err != nil {
		t.Fatalf("Add: %v", err)
	}
	tests := []struct {
		name  string
		seed  string
		op    string
		args  map[string]string
		field string // empty: resolves
	}{
		{name: "valid", seed: "test.registry", op: "count", args: map[string]string{"n": "12"}},
		{name: "no params, no args", seed: "test.registry", op: "none"},
		{name: "unknown seed", seed: "test.nope", op: "count", args: map[string]string{"n": "1"}, field: "seed_selector"},
		{name: "unknown operation", seed: "test.registry", op: "explode", field: "operation"},
		{name: "operation of another case", seed: "test.registry", op: "Count", args: map[string]string{"n": "1"}, field: "operation"},
		{name: "missing required", seed: "test.registry", op: "count", field: "args.n"},
		{name: "missing required among others", seed: "test.registry", op: "greet", args: map[string]string{"greeting": "hi"}, field: "args.name"},
		{name: "undeclared arg", seed: "test.registry", op: "count", args: map[string]string{"n": "1", "extra": "1"}, field: "args.extra"},
		{name: "undeclared arg on an op without params", seed: "test.registry", op: "none", args: map[string]string{"x": ""}, field: "args.x"},
		{name: "suffix beyond pattern", seed: "test.registry", op: "count", args: map[string]string{"n": "12a"}, field: "args.n"},
		{name: "prefix before pattern", seed: "test.registry", op: "count", args: map[string]string{"n": "a12"}, field: "args.n"},
		{name: "trailing newline", seed: "test.registry", op: "count", args: map[string]string{"n": "12\n"}, field: "args.n"},
		{name: "leading newline", seed: "test.registry", op: "count", args: map[string]string{"n": "\n12"}, field: "args.n"},
		{name: "empty value of required", seed: "test.registry", op: "count", args: map[string]string{"n": ""}, field: "args.n"},
		{name: "alternation anchored left", seed: "test.registry", op: "greet", args: map[string]string{"name": "bo", "greeting": "hellothere"}, field: "args.greeting"},
		{name: "alternation anchored right", seed: "test.registry", op: "greet", args: map[string]string{"name": "bo", "greeting": "ohi"}, field: "args.greeting"},
		{name: "alternation second branch", seed: "test.registry", op: "greet", args: map[string]string{"name": "bo", "greeting": "hi"}},
		{name: "optional absent", seed: "test.registry", op: "greet", args: map[string]string{"name": "bo"}},
		{name: "optional without pattern absent", seed: "test.registry", op: "note"},
		{name: "optional without pattern present", seed: "test.registry", op: "note", args: map[string]string{"text": "any $thing; at all"}},
		{name: "shell semicolon", seed: "test.registry", op: "greet", args: map[string]string{"name": "bob; rm -rf /"}, field: "args.name"},
		{name: "shell substitution", seed: "test.registry", op: "greet", args: map[string]string{"name": "$(id)"}, field: "args.name"},
		{name: "shell backticks", seed: "test.registry", op: "greet", args: map[string]string{"name": "`id`"}, field: "args.name"},
		{name: "shell pipe", seed: "test.registry", op: "greet", args: map[string]string{"name": "a|b"}, field: "args.name"},
		{name: "shell and", seed: "test.registry", op: "greet", args: map[string]string{"name": "a&&b"}, field: "args.name"},
		{name: "shell redirect", seed: "test.registry", op: "greet", args: map[string]string{"name": "a>b"}, field: "args.name"},
		{name: "shell newline", seed: "test.registry", op: "count", args: map[string]string{"n": "1\nreboot"}, field: "args.n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, info, err := r.Resolve(tc.seed, tc.op, tc.args)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Resolve: %v", err)
				}
				if got != Seed(seed) || info.Name != tc.op {
					t.Fatalf("Resolve returned seed %v operation %q, want %s %s", got, info.Name, seed.id, tc.op)
				}
				return
			}
			var pe *bus.Error
			if !errors.As(err, &pe) {
				t.Fatalf("Resolve error %v, want a *bus.Error", err)
			}
			if pe.Code != bus.CodeSemantic || pe.Class != bus.ClassSemantic || pe.Field != tc.field {
				t.Fatalf("error %d %s field %q (%s), want 1300 semantic field %q", pe.Code, pe.Class, pe.Field, pe.Message, tc.field)
			}
			if got != nil {
				t.Fatalf("a refused Resolve returned seed %v", got)
			}
		})
	}
	if n := seed.calls.Load(); n != 0 {
		t.Fatalf("Resolve executed the seed %d times", n)
	}
}

func TestRegistryAddRefusesInvalidDeclarations(t *testing.T) {
	tests := []struct {
		name string
		seed *testSeed
		want string // in the error
	}{
		{name: "uppercase seed id", seed: &testSeed{id: "Test.Seed", ops: []bus.OperationInfo{op("a")}}, want: "Test.Seed"},
		{name: "seed id with a space", seed: &testSeed{id: "test seed", ops: []bus.OperationInfo{op("a")}}, want: "test seed"},
		{name: "empty seed id", seed: &testSeed{id: "", ops: []bus.OperationInfo{op("a")}}, want: "empty"},
		{name: "invalid operation name", seed: &testSeed{id: "test.ok", ops: []bus.OperationInfo{op("Run Now")}}, want: "Run Now"},
		{name: "pattern does not compile", seed: &testSeed{id: "test.ok", ops: []bus.OperationInfo{op("a", param("n", true, `[0-9`))}}, want: "pattern"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRegistry()
			err := r.Add(tc.seed)
			if err == nil {
				t.Fatal("Add accepted an invalid seed declaration")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Add error %q does not mention %q", err, tc.want)
			}
			if len(r.Infos()) != 0 {
				t.Fatalf("a refused seed is hosted: %+v", r.Infos())
			}
		})
	}
}

func TestRegistryInfosSortedAndRemove(t *testing.T) {
	r := NewRegistry()
	for _, id := range []string{"zeta", "alpha", "mid.seed", "alpha.two"} {
		if err := r.Add(&testSeed{id: id, ops: []bus.OperationInfo{op("run")}}); err != nil {
			t.Fatalf("Add %s: %v", id, err)
		}
	}
	var ids []string
	for _, info := range r.Infos() {
		ids = append(ids, info.ID)
	}
	if got, want := strings.Join(ids, ","), "alpha,alpha.two,mid.seed,zeta"; got != want {
		t.Fatalf("Infos order %s, want %s", got, want)
	}

	if !r.Remove("mid.seed") {
		t.Fatal("Remove of a hosted seed reported false")
	}
	if r.Remove("mid.seed") {
		t.Fatal("second Remove reported true")
	}
	if _, _, err := r.Resolve("mid.seed", "run", nil); err == nil {
		t.Fatal("a removed seed still resolves")
	}
	if len(r.Infos()) != 3 {
		t.Fatalf("Infos after Remove: %+v", r.Infos())
	}
}

func TestRegistryAddReplacesSameID(t *testing.T) {
	r := NewRegistry()
	first := &testSeed{id: "test.swap", ops: []bus.OperationInfo{op("old")}}
	second := &testSeed{id: "test.swap", ops: []bus.OperationInfo{op("new")}}
	if err := r.Add(first); err != nil {
		t.Fatal(err)
	}
	if err := r.Add(second); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Resolve("test.swap", "old", nil); err == nil {
		t.Fatal("the replaced seed's operation still resolves")
	}
	got, _, err := r.Resolve("test.swap", "new", nil)
	if err != nil || got != Seed(second) {
		t.Fatalf("Resolve after replace: %v %v", got, err)
	}
	if n := len(r.Infos()); n != 1 {
		t.Fatalf("%d seeds hosted after replacing one, want 1", n)
	}
}
