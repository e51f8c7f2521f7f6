// Helpers shared by the bus tests: the golden envelopes under testdata/, edits of them,
// and checks of protocol errors.

package bus_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
)

// golden is one example envelope under testdata/ and the type it decodes into.
type golden struct {
	file string
	new  func() bus.Envelope
}

var goldens = []golden{
	{"issue.json", func() bus.Envelope { return new(bus.Issue) }},
	{"issue_reply_accepted.json", func() bus.Envelope { return new(bus.IssueReply) }},
	{"issue_reply_rejected.json", func() bus.Envelope { return new(bus.IssueReply) }},
	{"command.json", func() bus.Envelope { return new(bus.Command) }},
	{"seed_execute.json", func() bus.Envelope { return new(bus.SeedExecute) }},
	{"seed_result.json", func() bus.Envelope { return new(bus.SeedResult) }},
	{"event_success.json", func() bus.Envelope { return new(bus.Event) }},
	{"event_error.json", func() bus.Envelope { return new(bus.Event) }},
	{"event_ack.json", func() bus.Envelope { return new(bus.EventAck) }},
	{"register.json", func() bus.Envelope { return new(bus.Register) }},
	{"register_ack.json", func() bus.Envelope { return new(bus.RegisterAck) }},
	{"heartbeat.json", func() bus.Envelope { return new(bus.Heartbeat) }},
	{"announce.json", func() bus.Envelope { return new(bus.Announce) }},
	{"report.json", func() bus.Envelope { return new(bus.Report) }},
	{"probe.json", func() bus.Envelope { return new(bus.IDProbe) }},
	{"probe_answer.json", func() bus.Envelope { return new(bus.IDProbeAnswer) }},
}

func goldenOf(t testing.TB, file string) golden {
	t.Helper()
	for _, g := range goldens {
		if g.file == file {
			return g
		}
	}
	t.Fatalf("no golden %s", file)
	return golden{}
}

func readGolden(t testing.TB, file string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", file))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// jsonMap decodes a JSON object keeping numbers exact.
func jsonMap(t testing.TB, data []byte) map[string]any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatalf("not a JSON object: %v", err)
	}
	return m
}

var pathStep = regexp.MustCompile(`^([a-z_]+)((?:\[[0-9]+\])*)$`)

// parsePath turns "seeds[0].operations[1].name" into ["seeds", 0, "operations", 1, "name"].
func parsePath(t testing.TB, path string) []any {
	t.Helper()
	var steps []any
	for _, part := range strings.Split(path, ".") {
		m := pathStep.FindStringSubmatch(part)
		if m == nil {
			t.Fatalf("bad path %q", path)
		}
		steps = append(steps, m[1])
		for _, idx := range regexp.MustCompile(`[0-9]+`).FindAllString(m[2], -1) {
			n, _ := strconv.Atoi(idx)
			steps = append(steps, n)
		}
	}
	return steps
}

// editPath deletes (del) or sets the value at path, failing if the path does not exist (only
// the last key may be new when setting) so that a golden drifting from the tables is caught.
func editPath(t testing.TB, root map[string]any, path string, del bool, v any) {
	t.Helper()
	steps := parsePath(t, path)
	var cur any = root
	for i, s := range steps {
		last := i == len(steps)-1
		switch s := s.(type) {
		case string:
			m, ok := cur.(map[string]any)
			if !ok {
				t.Fatalf("path %q: %v is not an object", path, cur)
			}
			if _, ok := m[s]; !ok && !(last && !del) {
				t.Fatalf("path %q: no key %q in the golden", path, s)
			}
			if last {
				if del {
					delete(m, s)
				} else {
					m[s] = v
				}
				return
			}
			cur = m[s]
		case int:
			a, ok := cur.([]any)
			if !ok || s >= len(a) {
				t.Fatalf("path %q: no index %d", path, s)
			}
			if last {
				if del {
					t.Fatalf("path %q: cannot delete an array element", path)
				}
				a[s] = v
				return
			}
			cur = a[s]
		}
	}
}

// mutate returns the golden file with edit applied.
func mutate(t testing.TB, file string, edit func(m map[string]any)) []byte {
	t.Helper()
	m := jsonMap(t, readGolden(t, file))
	edit(m)
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func without(t testing.TB, file, path string) []byte {
	t.Helper()
	return mutate(t, file, func(m map[string]any) { editPath(t, m, path, true, nil) })
}

func with(t testing.TB, file, path string, v any) []byte {
	t.Helper()
	return mutate(t, file, func(m map[string]any) { editPath(t, m, path, false, v) })
}

// errorProblem says what is wrong with err, which should be a *bus.Error of code naming field
// (when field is not empty), or returns "".
func errorProblem(err error, code bus.Code, field string) string {
	var pe *bus.Error
	if !errors.As(err, &pe) {
		return fmt.Sprintf("error = %v (%T), want a *bus.Error of code %d", err, err, code)
	}
	if pe.Code != code {
		return fmt.Sprintf("code = %d (%v), want %d", pe.Code, pe, code)
	}
	if pe.Class != bus.ClassOf(code) {
		return fmt.Sprintf("class = %q, want %q", pe.Class, bus.ClassOf(code))
	}
	if field != "" && pe.Field != field {
		return fmt.Sprintf("field = %q (%v), want %q", pe.Field, pe, field)
	}
	return ""
}

// expectError fails unless err is a *bus.Error of code naming field.
func expectError(t *testing.T, err error, code bus.Code, field string) *bus.Error {
	t.Helper()
	if p := errorProblem(err, code, field); p != "" {
		t.Fatal(p)
	}
	var pe *bus.Error
	errors.As(err, &pe)
	return pe
}
