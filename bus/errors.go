package bus

import (
	"errors"
	"fmt"
)

// Code is a numeric error code of the edgectl taxonomy (CONTRACT.md, docs/protocol.md).
type Code int

// Error codes. The first block is the contract's; the others extend it in the same style.
const (
	CodeTransport   Code = 1000 // connect, handshake, disconnect, identity binding failure
	CodeFraming     Code = 1100 // envelope not decodable (not JSON, wrong type)
	CodeTooLarge    Code = 1101 // envelope too large
	CodeDecode      Code = 1200 // a field of the wrong type
	CodeSemantic    Code = 1300 // missing field, invalid id, wrong ghost_id, unknown seed/operation, bad args
	CodeRuntime     Code = 1400 // the seed's execution failed
	CodeExecTimeout Code = 1401 // the execution ran past the command's timeout_ms
	CodeInternal    Code = 1500 // a bug or a store failure
	CodeBusy        Code = 1501 // the request was not served now (a bound was reached): retry later
	CodeExpired     Code = 1600 // the command reached the Ghost after its deliver_by_ms
	CodeInterrupted Code = 1700 // the Ghost stopped during a non-idempotent execution: outcome unknown
	CodeSecurity    Code = 1800 // unsigned, untrusted, altered or stale command; signer mismatch
	CodeNoResponse  Code = 1900 // no terminal event reached Mirage before the intent's deadline
	CodeSkipped     Code = 1910 // the target was not started (rollout stopped, plan stopped)
)

// Class names, as carried in error objects.
const (
	ClassTransport   = "transport"
	ClassFraming     = "framing"
	ClassDecode      = "decode"
	ClassSemantic    = "semantic"
	ClassRuntime     = "runtime"
	ClassInternal    = "internal"
	ClassExpired     = "expired"
	ClassInterrupted = "interrupted"
	ClassSecurity    = "security"
	ClassTimeout     = "timeout"
	ClassSkipped     = "skipped"
	ClassBusy        = "busy"
)

// ClassOf returns the class of a code.
func ClassOf(c Code) string {
	switch c {
	case CodeTransport:
		return ClassTransport
	case CodeFraming, CodeTooLarge:
		return ClassFraming
	case CodeDecode:
		return ClassDecode
	case CodeSemantic:
		return ClassSemantic
	case CodeRuntime, CodeExecTimeout:
		return ClassRuntime
	case CodeExpired:
		return ClassExpired
	case CodeInterrupted:
		return ClassInterrupted
	case CodeSecurity:
		return ClassSecurity
	case CodeNoResponse:
		return ClassTimeout
	case CodeSkipped:
		return ClassSkipped
	case CodeBusy:
		return ClassBusy
	default:
		return ClassInternal
	}
}

// Error is a protocol error: a code and class of the taxonomy, a human message and, when
// one field is at fault, its JSON path. It is also the error object carried in envelopes.
type Error struct {
	Code    Code   `json:"code"`
	Class   string `json:"class"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Code, e.Class, e.Message)
}

// Errorf builds a protocol error of the given code.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Class: ClassOf(code), Message: capText(fmt.Sprintf(format, args...), MaxErrorMessage)}
}

// FieldError builds a protocol error about one field.
func FieldError(code Code, field, format string, args ...any) *Error {
	field = capText(field, maxErrorField)
	e := Errorf(code, "%s: %s", field, fmt.Sprintf(format, args...))
	e.Field = field
	return e
}

// MaxErrorMessage and maxErrorField bound an error's message and field. Both may quote
// what was refused (a key, a type, an argument's name or value): cut, the refusal of an
// envelope near the size limit still fits in its answer, even with every character
// escaped six-fold.
const (
	MaxErrorMessage = 4 << 10
	maxErrorField   = 256
)

// capText cuts s to at most max bytes, on a character boundary, marking the cut.
func capText(s string, max int) string {
	if c, cut := Cut(s, max-len("…")); cut {
		return c + "…"
	}
	return s
}

// AsError returns the protocol error inside err, or wraps err as an internal error.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var pe *Error
	if errors.As(err, &pe) {
		if !KnownCode(pe.Code) {
			return Errorf(CodeInternal, "error code %d outside the taxonomy: %s", pe.Code, pe.Message)
		}
		if pe.Class != ClassOf(pe.Code) {
			return &Error{Code: pe.Code, Class: ClassOf(pe.Code), Message: pe.Message, Field: pe.Field}
		}
		return pe
	}
	return Errorf(CodeInternal, "%v", err)
}

// KnownCode reports whether c is a code of the taxonomy.
func KnownCode(c Code) bool {
	switch c {
	case CodeTransport, CodeFraming, CodeTooLarge, CodeDecode, CodeSemantic, CodeRuntime,
		CodeExecTimeout, CodeInternal, CodeBusy, CodeExpired, CodeInterrupted, CodeSecurity,
		CodeNoResponse, CodeSkipped:
		return true
	}
	return false
}
