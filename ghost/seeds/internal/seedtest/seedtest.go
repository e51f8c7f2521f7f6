// Package seedtest holds the checks the built-in seeds' tests share: that a seed declares
// exactly the operations it should, and that a step's result is the success or the kind of
// failure expected. It is for tests only and owns no seed.
package seedtest

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost/seeds/internal/result"
)

var opName = regexp.MustCompile(`^[a-z0-9_.-]{1,64}$`)

// CheckDeclaration checks a seed's declaration: its id, a name and a description, and
// exactly the operations of want (name → whether it is idempotent), each with a valid name,
// a description, and params whose patterns compile anchored.
func CheckDeclaration(t *testing.T, info bus.SeedInfo, id string, want map[string]bool) {
	t.Helper()
	if info.ID != id || info.Name == "" || info.Description == "" {
		t.Fatalf("info = %+v, want id, name and description", info)
	}
	left := map[string]bool{}
	for k, v := range want {
		left[k] = v
	}
	for _, op := range info.Operations {
		if !opName.MatchString(op.Name) {
			t.Errorf("operation name %q is not a valid operation name", op.Name)
		}
		idem, known := left[op.Name]
		if !known {
			t.Errorf("unexpected operation %q", op.Name)
		}
		delete(left, op.Name)
		if known && op.Idempotent != idem {
			t.Errorf("operation %s: idempotent = %v, want %v", op.Name, op.Idempotent, idem)
		}
		if op.Description == "" {
			t.Errorf("operation %s has no description", op.Name)
		}
		for _, p := range op.Params {
			if p.Name == "" || p.Pattern == "" {
				t.Errorf("operation %s: param %+v needs a name and a pattern", op.Name, p)
			}
			if _, err := bus.ParseParamPattern(p.Pattern); err != nil {
				t.Errorf("operation %s param %s: %v", op.Name, p.Name, err)
			}
		}
	}
	for name := range left {
		t.Errorf("operation %q is not declared", name)
	}
}

// Want is the expected result of one step.
type Want struct {
	Status string // result.StatusOK for a success
	Stdout string // on success
	Field  string // on a refusal: the semantic error's field
	ErrIs  error  // on a runtime failure: the error it wraps, if any
	Says   string // on a failure: text its message holds, if any
}

// CheckResult checks a step's result against w: a success with its stdout; or a failure
// with exit 1 and a stderr, being a semantic refusal on w.Field, or else a plain runtime
// error (wrapping w.ErrIs when set).
func CheckResult(t *testing.T, res bus.Result, err error, w Want) {
	t.Helper()
	if res.Status != w.Status {
		t.Fatalf("status = %q (err %v), want %q", res.Status, err, w.Status)
	}
	if w.Status == result.StatusOK {
		if err != nil || res.ExitCode != 0 || res.Stdout != w.Stdout {
			t.Fatalf("result = %+v, err = %v; want stdout %q", res, err, w.Stdout)
		}
		return
	}
	if err == nil || res.ExitCode != 1 || res.Stderr == "" {
		t.Fatalf("result = %+v, err = %v; want an error, exit 1 and a stderr", res, err)
	}
	if w.Says != "" && !strings.Contains(err.Error(), w.Says) {
		t.Fatalf("err = %v, want it to say %q", err, w.Says)
	}
	var pe *bus.Error
	isProtocol := errors.As(err, &pe)
	if w.Field != "" {
		if !isProtocol || pe.Code != bus.CodeSemantic || pe.Field != w.Field {
			t.Fatalf("err = %v, want a semantic error on %s", err, w.Field)
		}
		return
	}
	if isProtocol {
		t.Fatalf("err = %v, want a plain error (a runtime failure)", err)
	}
	if w.ErrIs != nil && !errors.Is(err, w.ErrIs) {
		t.Fatalf("err = %v, want %v", err, w.ErrIs)
	}
}
