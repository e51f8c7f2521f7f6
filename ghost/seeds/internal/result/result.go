// Package result builds the seed.result of the built-in seeds: plain or JSON output on
// success, the error's message on stderr on failure, and JSON arrays cut to fit the
// output cap. It owns no seed.
package result

import (
	"encoding/json"
	"errors"
	"strings"

	"github.com/edgectl/edgectl/bus"
)

// Statuses of a result.
const (
	StatusOK     = "ok"
	StatusFailed = "failed"
)

// OK is a successful result with stdout.
func OK(stdout string) bus.Result {
	return bus.Result{Status: StatusOK, ExitCode: 0, Stdout: stdout}
}

// JSON is a successful result whose stdout is v as compact JSON.
func JSON(v any) (bus.Result, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return Failed(StatusFailed, err)
	}
	return OK(string(data)), nil
}

// Failed returns the result and error of a failed execution: exit 1, the message on
// stderr, err unchanged so that callers can match it.
func Failed(status string, err error) (bus.Result, error) {
	msg := err.Error()
	var pe *bus.Error
	if errors.As(err, &pe) {
		msg = pe.Message
	}
	return bus.Result{Status: status, ExitCode: 1, Stderr: msg}, err
}

// Array encodes items as a compact JSON array of at most max bytes. Items that do not fit
// are left out, so the output stays valid JSON, and it reports that something was.
func Array[T any](items []T, max int) (string, bool, error) {
	var b strings.Builder
	b.WriteByte('[')
	for i, it := range items {
		enc, err := json.Marshal(it)
		if err != nil {
			return "", false, err
		}
		if b.Len()+len(enc)+2 > max { // a comma and the closing bracket
			b.WriteByte(']')
			return b.String(), true, nil
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(enc)
	}
	b.WriteByte(']')
	return b.String(), false, nil
}
