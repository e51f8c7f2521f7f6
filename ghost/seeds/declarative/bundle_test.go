package declarative

import (
	"errors"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
)

// ManifestFromArgs refuses an id or version with ".." for what it is, and reads ".." in
// the spec's object name as a path element, not as two bytes anywhere: the message never
// contradicts the name it refuses.
func TestManifestFromArgs(t *testing.T) {
	sum := strings.Repeat("a", 64)
	args := func(id, version, spec string) map[string]string {
		a := map[string]string{ArgID: id, ArgVersion: version, ArgSHA256: sum}
		if spec != "" {
			a[ArgSpec] = spec
		}
		return a
	}
	for _, tc := range []struct {
		name  string
		args  map[string]string
		field string // refused on this field, or accepted when empty
		why   string
	}{
		{"plain", args("svc.a", "1.2.3", ""), "", ""},
		{"a spec object of its own", args("svc.a", "1", "svc.a/1/custom/spec.toml"), "", ""},
		{"dots inside a name", args("svc.a", "1", "svc.a/1/spec..toml"), "", ""},
		{"dotdot id", args("a..b", "1", ""), "args.id", `contains ".."`},
		{"dotdot version", args("svc.a", "1..2", ""), "args.version", `contains ".."`},
		{"a .. element", args("svc.a", "1", "svc.a/1/../2/spec.toml"), "args.spec", ".. element"},
		{"another seed's object", args("svc.a", "1", "svc.b/1/spec.toml"), "args.spec", "not under svc.a/1/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m Manifest
			err := ManifestFromArgs(tc.args, &m)
			if tc.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var perr *bus.Error
			if !errors.As(err, &perr) || perr.Field != tc.field || !strings.Contains(perr.Message, tc.why) {
				t.Fatalf("err %v, want a refusal of %s saying %q", err, tc.field, tc.why)
			}
		})
	}
}
