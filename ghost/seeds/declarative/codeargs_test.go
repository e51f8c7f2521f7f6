package declarative

import (
	"strings"
	"testing"
)

// A param may not stand where a shell or interpreter reads its options or its code: the
// value would be read as code. After the code, or after the script it runs, it is the
// code's own argument, which is fine.
func TestParseRefusesParamsInCode(t *testing.T) {
	head := "id = \"a.b\"\nname = \"n\"\nversion = \"1\"\n[[files]]\nname = \"run.sh\"\n" +
		"[operations.x]\ndescription = \"d\"\nidempotent = true\n"
	params := "[operations.x.params.v]\npattern = \"[^\\\\x00]{1,64}\"\n[operations.x.params.w]\npattern = \"[a-z]*\"\n"
	spec := func(argv ...string) string {
		q := make([]string, len(argv))
		for i, a := range argv {
			q[i] = "\"" + strings.ReplaceAll(a, "\"", "\\\"") + "\""
		}
		return head + "argv = [" + strings.Join(q, ", ") + "]\n" + params
	}
	for _, tc := range []struct {
		name string
		argv []string
		ok   bool
	}{
		{"sh -c with the param in the script", []string{"/bin/sh", "-c", "echo {{v}} {{w}}"}, false},
		{"bash -ec cluster", []string{"bash", "-ec", "echo {{v}}", "{{w}}"}, false},
		{"the whole script a param", []string{"/bin/bash", "-c", "{{v}}", "{{w}}"}, false},
		{"a param as an option", []string{"sh", "{{v}}", "{{w}}"}, false},
		{"options then -c", []string{"bash", "-o", "pipefail", "-c", "x {{v}}", "{{w}}"}, false},
		{"through env", []string{"env", "LANG=C", "sh", "-c", "echo {{v}}", "{{w}}"}, false},
		{"through busybox", []string{"busybox", "sh", "-c", "echo {{v}}", "{{w}}"}, false},
		{"python -c", []string{"python3", "-c", "print('{{v}}')", "{{w}}"}, false},
		{"perl -ne", []string{"/usr/bin/perl", "-ne", "print if /{{v}}/", "{{w}}"}, false},
		{"node --eval", []string{"node", "--eval", "{{v}}", "{{w}}"}, false},
		{"awk program", []string{"awk", "-F", ",", "{print ${{v}}}", "{{w}}"}, false},
		{"awk -F value", []string{"awk", "-F", "{{v}}", "{print}", "{{w}}"}, false},
		{"env -u with a value", []string{"env", "-u", "HOME", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"env -S", []string{"env", "-S", "sh -c", "{{v}}", "{{w}}"}, false},
		{"an option value with a c", []string{"bash", "-O", "nocaseglob", "-c", "{{v}}", "{{w}}"}, false},

		{"sh -c with values as its arguments", []string{"/bin/sh", "-c", "echo \"$1\" \"$2\"", "sh", "{{v}}", "{{w}}"}, true},
		{"a shipped script", []string{"/bin/sh", "{{file:run.sh}}", "{{v}}", "{{w}}"}, true},
		{"an absolute script", []string{"python3", "-W", "ignore", "/opt/tool.py", "{{v}}", "{{w}}"}, true},
		{"python -m", []string{"python3", "-m", "json.tool", "{{v}}", "{{w}}"}, true},
		{"awk with files after its program", []string{"awk", "-F", ",", "{print $1}", "{{v}}", "{{w}}"}, true},
		{"not an interpreter", []string{"/bin/echo", "-c", "{{v}}", "{{w}}"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(spec(tc.argv...)))
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && (err == nil || !strings.Contains(err.Error(), "operations.x.argv")) {
				t.Fatalf("accepted (err %v): a param would be read as code", err)
			}
		})
	}
}
