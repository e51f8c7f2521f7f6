package flow

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// ID is the seed id of the flow seed.
const ID = "seed.flow"

// Limits of the arguments. Both are declared (sleep's max, the message's max_bytes), so
// Mirage refuses an issue past them; the seed checks them again.
const (
	MaxSleepMS     = 60000
	MaxMessageSize = 4096
)

func ptr[T any](v T) *T { return &v }

// Result statuses.
const (
	StatusOK     = "ok"
	StatusFailed = "failed"
)

// steps is the fixed output of step, by name.
var steps = map[string]string{
	"init":  "init: workspace initialised",
	"plan":  "plan: 1 to add, 0 to change, 0 to destroy",
	"apply": "apply: 1 added, 0 changed, 0 destroyed",
}

// Seed is seed.flow. It has no state; the zero value is ready to use.
type Seed struct{}

// New returns the flow seed.
func New() *Seed { return &Seed{} }

// Info declares the seed and its operations.
func (s *Seed) Info() bus.SeedInfo {
	return bus.SeedInfo{
		ID:          ID,
		Name:        "Flow",
		Description: "Deterministic operations for demos and tests; no side effects.",
		Operations: []bus.OperationInfo{
			{
				Name:        "status",
				Description: `Report that the seed is ready: stdout is "seed.flow ready".`,
				Idempotent:  true,
				Params:      []bus.ParamInfo{},
			},
			{
				Name:        "echo",
				Description: "Return the message unchanged as stdout (empty when no message is given).",
				Idempotent:  true,
				Params: []bus.ParamInfo{
					{Name: "message", Pattern: `(?s).*`, MaxBytes: MaxMessageSize, Description: "text to return, at most 4096 bytes"},
				},
			},
			{
				Name:        "step",
				Description: "Pretend to run one step of a plan/apply workflow; stdout is one fixed line per step.",
				Idempotent:  true,
				Params: []bus.ParamInfo{
					{Name: "name", Required: true, Pattern: `init|plan|apply`, Description: "the step: init, plan or apply"},
				},
			},
			{
				Name:        "sleep",
				Description: `Wait ms milliseconds (at most 60000), or until the execution is cancelled; stdout is "slept <ms>ms".`,
				Idempotent:  true,
				Params: []bus.ParamInfo{
					{Name: "ms", Required: true, Pattern: `[0-9]{1,18}`, Min: ptr(int64(0)), Max: ptr(int64(MaxSleepMS)), Description: "milliseconds to wait, 0 to 60000"},
				},
			},
		},
	}
}

// Execute runs one operation.
func (s *Seed) Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error) {
	if req == nil {
		return failed(bus.Errorf(bus.CodeSemantic, "no seed.execute given"))
	}
	if err := ctx.Err(); err != nil {
		return failed(err)
	}
	switch req.Operation {
	case "status":
		return ok(ID + " ready"), nil
	case "echo":
		msg := req.Args["message"]
		if len(msg) > MaxMessageSize {
			return failed(bus.FieldError(bus.CodeSemantic, "args.message", "is %d bytes, at most %d are allowed", len(msg), MaxMessageSize))
		}
		return ok(msg), nil
	case "step":
		name := req.Args["name"]
		out, known := steps[name]
		if !known {
			return failed(bus.FieldError(bus.CodeSemantic, "args.name", "unknown step %q; use init, plan or apply", name))
		}
		return ok(out), nil
	case "sleep":
		return sleep(ctx, req.Args["ms"])
	default:
		return failed(bus.FieldError(bus.CodeSemantic, "operation", "%s has no operation %q", ID, req.Operation))
	}
}

func sleep(ctx context.Context, arg string) (bus.Result, error) {
	ms, err := strconv.Atoi(arg)
	if err != nil || ms < 0 {
		return failed(bus.FieldError(bus.CodeSemantic, "args.ms", "%q is not a number of milliseconds", arg))
	}
	if ms > MaxSleepMS {
		return failed(bus.FieldError(bus.CodeSemantic, "args.ms", "%d is more than the limit of %d", ms, MaxSleepMS))
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return ok(fmt.Sprintf("slept %dms", ms)), nil
	case <-ctx.Done():
		r, err := failed(ctx.Err())
		r.Stderr = fmt.Sprintf("sleep of %dms interrupted: %v", ms, err)
		return r, err
	}
}

func ok(stdout string) bus.Result {
	return bus.Result{Status: StatusOK, ExitCode: 0, Stdout: stdout}
}

// failed returns the result and error of a failed execution; err is returned as is so
// that callers can match it (errors.Is(err, context.Canceled), a *bus.Error's code).
func failed(err error) (bus.Result, error) {
	msg := err.Error()
	var pe *bus.Error
	if errors.As(err, &pe) {
		msg = pe.Message
	}
	return bus.Result{Status: StatusFailed, ExitCode: 1, Stderr: msg}, err
}
