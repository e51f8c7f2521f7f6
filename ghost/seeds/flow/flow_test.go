package flow_test

import (
	"context"
	"errors"
	"github.com/edgectl/edgectl/ghost/seeds/internal/seedtest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost/seeds/flow"
)

// seed is the interface the Ghost calls, restated here so the test does not import ghost.
type seed interface {
	Info() bus.SeedInfo
	Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error)
}

var _ seed = flow.New()

func exec(t *testing.T, ctx context.Context, s seed, op string, args map[string]string) (bus.Result, error) {
	t.Helper()
	return s.Execute(ctx, &bus.SeedExecute{SeedID: flow.ID, Operation: op, Args: args})
}

func TestExecute(t *testing.T) {
	tests := []struct {
		name   string
		op     string
		args   map[string]string
		stdout string
		field  string // non-empty: a semantic refusal of this field is expected
	}{
		{name: "status", op: "status", stdout: "seed.flow ready"},
		{name: "echo message", op: "echo", args: map[string]string{"message": "hello, fleet"}, stdout: "hello, fleet"},
		{name: "echo multiline", op: "echo", args: map[string]string{"message": "a\nb"}, stdout: "a\nb"},
		{name: "echo nothing", op: "echo", stdout: ""},
		{name: "echo too long", op: "echo", args: map[string]string{"message": strings.Repeat("x", flow.MaxMessageSize+1)}, field: "args.message"},
		{name: "step init", op: "step", args: map[string]string{"name": "init"}, stdout: "init: workspace initialised"},
		{name: "step plan", op: "step", args: map[string]string{"name": "plan"}, stdout: "plan: 1 to add, 0 to change, 0 to destroy"},
		{name: "step apply", op: "step", args: map[string]string{"name": "apply"}, stdout: "apply: 1 added, 0 changed, 0 destroyed"},
		{name: "step unknown", op: "step", args: map[string]string{"name": "destroy"}, field: "args.name"},
		{name: "step missing", op: "step", field: "args.name"},
		{name: "sleep 0", op: "sleep", args: map[string]string{"ms": "0"}, stdout: "slept 0ms"},
		{name: "sleep 20", op: "sleep", args: map[string]string{"ms": "20"}, stdout: "slept 20ms"},
		{name: "sleep over limit", op: "sleep", args: map[string]string{"ms": "60001"}, field: "args.ms"},
		{name: "sleep far over limit", op: "sleep", args: map[string]string{"ms": "99999"}, field: "args.ms"},
		{name: "sleep not a number", op: "sleep", args: map[string]string{"ms": "soon"}, field: "args.ms"},
		{name: "sleep missing", op: "sleep", field: "args.ms"},
		{name: "unknown operation", op: "reboot", field: "operation"},
	}
	s := flow.New()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := exec(t, context.Background(), s, tc.op, tc.args)
			if tc.field != "" {
				var pe *bus.Error
				if !errors.As(err, &pe) || pe.Code != bus.CodeSemantic || pe.Field != tc.field {
					t.Fatalf("err = %v, want a semantic error on %s", err, tc.field)
				}
				if res.Status != flow.StatusFailed || res.ExitCode != 1 || res.Stderr == "" {
					t.Fatalf("result = %+v, want failed, exit 1 and a stderr", res)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			want := bus.Result{Status: flow.StatusOK, ExitCode: 0, Stdout: tc.stdout}
			if res != want {
				t.Fatalf("result = %+v, want %+v", res, want)
			}
		})
	}
}

func TestSleepHonoursContext(t *testing.T) {
	tests := []struct {
		name   string
		ctx    func() (context.Context, context.CancelFunc)
		expect error
	}{
		{name: "cancelled during the sleep", expect: context.Canceled, ctx: func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(20*time.Millisecond, cancel)
			return ctx, cancel
		}},
		{name: "deadline during the sleep", expect: context.DeadlineExceeded, ctx: func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 20*time.Millisecond)
		}},
		{name: "cancelled before the call", expect: context.Canceled, ctx: func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			res, err := exec(t, ctx, flow.New(), "sleep", map[string]string{"ms": "60000"})
			if took := time.Since(start); took > 2*time.Second {
				t.Fatalf("sleep returned after %v, want at once after cancellation", took)
			}
			if !errors.Is(err, tc.expect) {
				t.Fatalf("err = %v, want %v", err, tc.expect)
			}
			if res.Status != flow.StatusFailed || res.ExitCode != 1 || res.Stderr == "" {
				t.Fatalf("result = %+v, want failed, exit 1 and a stderr", res)
			}
		})
	}
}

func TestDeclaration(t *testing.T) {
	seedtest.CheckDeclaration(t, flow.New().Info(), flow.ID, map[string]bool{"status": true, "echo": true, "step": true, "sleep": true})
}

func TestPatterns(t *testing.T) {
	tests := []struct {
		op, param, value string
		match            bool
	}{
		{"step", "name", "init", true},
		{"step", "name", "apply", true},
		{"step", "name", "initx", false},
		{"step", "name", "xplan", false},
		{"sleep", "ms", "60000", true},
		{"sleep", "ms", "0", true},
		{"sleep", "ms", "01000", true},
		{"sleep", "ms", "1e3", false},
		{"sleep", "ms", "-1", false},
		{"sleep", "ms", "", false},
		{"echo", "message", "", true},
		{"echo", "message", "two\nlines", true},
	}
	info := flow.New().Info()
	for _, tc := range tests {
		op, ok := info.Operation(tc.op)
		if !ok {
			t.Fatalf("operation %s is not declared", tc.op)
		}
		var pattern string
		for _, p := range op.Params {
			if p.Name == tc.param {
				pattern = p.Pattern
			}
		}
		re := regexp.MustCompile("^(?:" + pattern + ")$")
		if got := re.MatchString(tc.value); got != tc.match {
			t.Errorf("%s.%s pattern %q on %q: match = %v, want %v", tc.op, tc.param, pattern, tc.value, got, tc.match)
		}
	}
}
