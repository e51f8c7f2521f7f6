package bus_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
)

func TestClassOf(t *testing.T) {
	tests := []struct {
		code bus.Code
		want string
	}{
		{bus.CodeTransport, bus.ClassTransport},
		{bus.CodeFraming, bus.ClassFraming},
		{bus.CodeTooLarge, bus.ClassFraming},
		{bus.CodeDecode, bus.ClassDecode},
		{bus.CodeSemantic, bus.ClassSemantic},
		{bus.CodeRuntime, bus.ClassRuntime},
		{bus.CodeExecTimeout, bus.ClassRuntime},
		{bus.CodeInternal, bus.ClassInternal},
		{bus.CodeBusy, bus.ClassBusy},
		{bus.CodeExpired, bus.ClassExpired},
		{bus.CodeInterrupted, bus.ClassInterrupted},
		{bus.CodeSecurity, bus.ClassSecurity},
		{bus.CodeNoResponse, bus.ClassTimeout},
		{bus.CodeSkipped, bus.ClassSkipped},
		{0, bus.ClassInternal},
		{42, bus.ClassInternal},
	}
	for _, tt := range tests {
		if got := bus.ClassOf(tt.code); got != tt.want {
			t.Errorf("ClassOf(%d) = %q, want %q", tt.code, got, tt.want)
		}
	}
	// The contract's codes keep their numbers.
	for code, want := range map[bus.Code]int{
		bus.CodeTransport: 1000, bus.CodeFraming: 1100, bus.CodeTooLarge: 1101, bus.CodeDecode: 1200,
		bus.CodeSemantic: 1300, bus.CodeRuntime: 1400, bus.CodeInternal: 1500,
	} {
		if int(code) != want {
			t.Errorf("code %d, want %d", code, want)
		}
	}
}

func TestErrorf(t *testing.T) {
	e := bus.Errorf(bus.CodeTooLarge, "envelope is %d bytes", 7)
	if e.Code != bus.CodeTooLarge || e.Class != bus.ClassFraming || e.Message != "envelope is 7 bytes" || e.Field != "" {
		t.Errorf("Errorf = %+v", e)
	}
	if got, want := e.Error(), "1101 framing: envelope is 7 bytes"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	f := bus.FieldError(bus.CodeSemantic, "ghost_id", "is %q", "a.b")
	if f.Field != "ghost_id" || f.Class != bus.ClassSemantic || f.Message != `ghost_id: is "a.b"` {
		t.Errorf("FieldError = %+v", f)
	}
}

func TestAsError(t *testing.T) {
	if bus.AsError(nil) != nil {
		t.Error("AsError(nil) is not nil")
	}
	pe := bus.FieldError(bus.CodeSemantic, "ghost_id", "missing")
	if bus.AsError(pe) != pe {
		t.Error("AsError of a *bus.Error is not that error")
	}
	if bus.AsError(fmt.Errorf("intake: %w", pe)) != pe {
		t.Error("AsError of a wrapped *bus.Error is not that error")
	}
	got := bus.AsError(errors.New("disk full"))
	if got.Code != bus.CodeInternal || got.Class != bus.ClassInternal || !strings.Contains(got.Message, "disk full") {
		t.Errorf("AsError(plain error) = %+v, want an internal error keeping the message", got)
	}
}

// An error carried as a *bus.Error leaves as a code of the taxonomy with its own class,
// whatever a seed built: an unknown code becomes internal, a wrong class is corrected.
func TestAsErrorKeepsToTheTaxonomy(t *testing.T) {
	if e := bus.AsError(&bus.Error{Code: 42, Class: "mine", Message: "boom"}); e.Code != bus.CodeInternal || e.Class != bus.ClassInternal || !strings.Contains(e.Message, "boom") {
		t.Errorf("unknown code: %+v", e)
	}
	if e := bus.AsError(&bus.Error{Code: bus.CodeRuntime, Class: "security", Message: "boom"}); e.Code != bus.CodeRuntime || e.Class != bus.ClassRuntime {
		t.Errorf("wrong class: %+v", e)
	}
}
