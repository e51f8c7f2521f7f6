package declarative

import (
	"strings"
	"testing"
)

// A param may not stand where a shell or interpreter reads its options or its code, named
// directly or through wrappers that run it (nice, timeout, sudo, …): the value would be
// read as code. After the code, or after the script it runs, it is the
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
		{"su -s choosing the shell", []string{"su", "-s", "{{v}}", "app", "--", "-c", "echo \"$1\"", "sh", "{{w}}"}, false},
		{"su -s attached choosing the shell", []string{"su", "-s{{v}}", "app", "--", "-c", "echo \"$1\"", "sh", "{{w}}"}, false},
		{"runuser --shell= choosing the shell", []string{"runuser", "--shell={{v}}", "app", "--", "-c", "echo \"$1\"", "sh", "{{w}}"}, false},
		{"su -s with a literal shell", []string{"su", "-s", "/bin/sh", "app", "--", "-c", "echo \"$1\" \"$2\"", "sh", "{{v}}", "{{w}}"}, true},
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
		{"options between -c and the code", []string{"bash", "-c", "-e", "{{v}}", "{{w}}"}, false},
		{"-- between -c and the code", []string{"sh", "-c", "--", "{{v}}", "{{w}}"}, false},

		// Wrappers that run the program named after their options and operands.
		{"nice", []string{"nice", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"nice -n", []string{"nice", "-n", "5", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"nice -n attached", []string{"nice", "-n5", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"ionice", []string{"ionice", "-c", "3", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"timeout and its duration", []string{"timeout", "5", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"timeout -s and its duration", []string{"timeout", "-s", "KILL", "-k", "1", "5s", "bash", "-c", "{{v}}", "{{w}}"}, false},
		{"nohup", []string{"nohup", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"stdbuf", []string{"stdbuf", "-o", "L", "-eL", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"time", []string{"/usr/bin/time", "-f", "%e", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"sudo -n", []string{"sudo", "-n", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"sudo -u", []string{"sudo", "-u", "app", "--", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"sudo -s", []string{"sudo", "-s", "echo", "{{v}}", "{{w}}"}, false},
		{"doas", []string{"doas", "-u", "app", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"runuser -u", []string{"runuser", "-u", "app", "--", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"runuser -c", []string{"runuser", "-l", "app", "-c", "{{v}}", "{{w}}"}, false},
		{"su USER -c", []string{"su", "app", "-c", "{{v}}", "{{w}}"}, false},
		{"su --session-command", []string{"su", "--session-command", "{{v}}", "app", "{{w}}"}, false},
		{"su USER --, the shell's -c", []string{"su", "app", "--", "-c", "{{v}}", "{{w}}"}, false},
		{"runuser -u PROGRAM --, the shell's -c", []string{"runuser", "-u", "app", "sh", "--", "-c", "{{v}}", "{{w}}"}, false},
		{"runuser -u, an option after the program", []string{"runuser", "-u", "app", "/bin/echo", "-n", "{{v}}", "{{w}}"}, false},
		{"su - USER, the user's shell reads a param", []string{"su", "-", "app", "{{v}}", "{{w}}"}, false},
		{"xargs -0", []string{"xargs", "-0", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"xargs -I", []string{"xargs", "-I", "%", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"chroot", []string{"chroot", "--userspec", "app:app", "/srv/root", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"taskset", []string{"taskset", "-c", "0-1", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"flock FILE PROGRAM", []string{"flock", "-w", "5", "/run/x.lock", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"flock FILE -c", []string{"flock", "/run/x.lock", "-c", "{{v}}", "{{w}}"}, false},
		{"unshare", []string{"unshare", "-n", "--wd", "/", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"nsenter", []string{"nsenter", "-t", "1", "-m", "-u", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"chrt", []string{"chrt", "-f", "10", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"setpriv", []string{"setpriv", "--reuid", "app", "--init-groups", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"prlimit, after its --", []string{"prlimit", "--nofile=64", "--", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"systemd-run, after its --", []string{"systemd-run", "-p", "Nice=5", "--scope", "--", "bash", "-c", "{{v}}", "{{w}}"}, false},
		{"wrappers in a row", []string{"nice", "timeout", "5", "env", "LANG=C", "busybox", "sh", "-c", "{{v}}", "{{w}}"}, false},
		{"a param as the program of a wrapper", []string{"nice", "{{v}}", "{{w}}"}, false},
		{"a param as the program after an operand", []string{"timeout", "5", "{{v}}", "{{w}}"}, false},
		{"a param as a wrapper's option", []string{"nice", "-{{v}}", "ls", "{{w}}"}, false},
		{"env assignment", []string{"env", "LD_PRELOAD={{v}}", "ls", "{{w}}"}, false},
		{"ssh joins a remote command", []string{"ssh", "host", "cat", "{{v}}", "{{w}}"}, false},

		// Version and build suffixes.
		{"bash-5.2", []string{"bash-5.2", "-c", "{{v}}", "{{w}}"}, false},
		{"python3.12-dbg", []string{"python3.12-dbg", "-c", "{{v}}", "{{w}}"}, false},
		{"python-dbg", []string{"/usr/bin/python-dbg", "-c", "{{v}}", "{{w}}"}, false},

		// sed's script is code (GNU sed's e command runs it), and other -e languages.
		{"sed script", []string{"sed", "-n", "{{v}}", "/etc/hostname", "{{w}}"}, false},
		{"sed -e", []string{"sed", "-e", "{{v}}", "{{w}}"}, false},
		{"sed --expression=", []string{"sed", "--expression={{v}}", "{{w}}"}, false},
		{"sed a second -e", []string{"sed", "-e", "s/a/b/", "-e", "{{v}}", "{{w}}"}, false},
		{"sed -f chosen", []string{"sed", "-f", "{{v}}", "{{w}}"}, false},
		{"perl a second -e", []string{"perl", "-e", "print 1;", "-e", "{{v}}", "{{w}}"}, false},
		{"julia -e", []string{"julia", "-e", "{{v}}", "{{w}}"}, false},
		{"Rscript -e", []string{"Rscript", "-e", "{{v}}", "{{w}}"}, false},
		{"dc -e", []string{"dc", "-e", "{{v}}", "{{w}}"}, false},
		{"ruby -e", []string{"ruby3.1", "-e", "{{v}}", "{{w}}"}, false},
		{"php -r", []string{"php8.2", "-r", "{{v}}", "{{w}}"}, false},

		{"sh -c with values as its arguments", []string{"/bin/sh", "-c", "echo \"$1\" \"$2\"", "sh", "{{v}}", "{{w}}"}, true},
		{"a shipped script", []string{"/bin/sh", "{{file:run.sh}}", "{{v}}", "{{w}}"}, true},
		{"an absolute script", []string{"python3", "-W", "ignore", "/opt/tool.py", "{{v}}", "{{w}}"}, true},
		{"python -m", []string{"python3", "-m", "json.tool", "{{v}}", "{{w}}"}, true},
		{"awk with files after its program", []string{"awk", "-F", ",", "{print $1}", "{{v}}", "{{w}}"}, true},
		{"not an interpreter", []string{"/bin/echo", "-c", "{{v}}", "{{w}}"}, true},
		{"a wrapper's option values and operands", []string{"timeout", "--signal={{w}}", "{{v}}", "ls"}, true},
		{"nice -n a param", []string{"nice", "-n", "{{w}}", "/bin/echo", "{{v}}"}, true},
		{"sudo -u a param", []string{"sudo", "-u", "{{w}}", "/usr/bin/id", "{{v}}"}, true},
		{"through wrappers, values after the code", []string{"nice", "timeout", "5", "sh", "-c", "echo \"$1\"", "sh", "{{v}}", "{{w}}"}, true},
		{"runuser a shipped script", []string{"runuser", "-u", "app", "--", "/bin/sh", "{{file:run.sh}}", "{{v}}", "{{w}}"}, true},
		{"su --session-command literal", []string{"su", "--session-command", "echo \"$1\"", "app", "{{v}}", "{{w}}"}, true},
		{"su USER --, values after the shell's code", []string{"su", "-", "app", "--", "-c", "echo \"$1\"", "sh", "{{v}}", "{{w}}"}, true},
		{"runuser -u, options after the user", []string{"runuser", "-u", "app", "-g", "{{w}}", "--", "/bin/echo", "{{v}}"}, true},
		{"flock a program", []string{"flock", "{{w}}", "/bin/echo", "{{v}}"}, true},
		{"setpriv option values", []string{"setpriv", "--reuid", "{{w}}", "--clear-groups", "/bin/echo", "{{v}}"}, true},
		{"prlimit without --, not read", []string{"prlimit", "--nofile={{w}}", "/bin/echo", "{{v}}"}, true},
		{"taskset -p runs nothing", []string{"taskset", "-p", "{{w}}", "{{v}}"}, true},
		{"ssh destination and user", []string{"ssh", "-l", "{{w}}", "{{v}}", "uptime"}, true},
		{"sed script then files", []string{"sed", "-n", "s/x/y/p", "{{v}}", "{{w}}"}, true},
		{"sed -e then files", []string{"sed", "-e", "s/a/b/", "-i.bak", "{{v}}", "{{w}}"}, true},
		{"perl -e then arguments", []string{"perl", "-e", "print @ARGV", "{{v}}", "{{w}}"}, true},
		{"python -c then arguments", []string{"python3.12", "-c", "import sys", "{{v}}", "{{w}}"}, true},
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

// setsid puts the program in a new session, out of the process group the Ghost kills at
// the operation's timeout and when it stops: the spec is refused, named directly or
// through a wrapper, with or without params, and the message says why. su and runuser -c
// (--command) and --pty call setsid(2) for what they run, wherever the option stands.
func TestParseRefusesSetsid(t *testing.T) {
	head := "id = \"a.b\"\nname = \"n\"\nversion = \"1\"\n[operations.x]\ndescription = \"d\"\nidempotent = true\n"
	for _, argv := range []string{
		`["setsid", "sleep", "30"]`,
		`["/usr/bin/setsid", "-f", "sleep", "30"]`,
		`["nice", "-n", "5", "setsid", "sleep", "30"]`,
		`["sudo", "-n", "--", "setsid", "sleep", "30"]`,
		`["busybox", "setsid", "sleep", "30"]`,
		`["su", "-c", "sleep 30", "app"]`,
		`["su", "-c", "kill \"$1\"", "app", "--", "sh", "1"]`,
		`["su", "app", "-c", "sleep 30"]`,
		`["su", "-", "app", "-lc", "sleep 30"]`,
		`["su", "app", "--command=sleep 30"]`,
		`["runuser", "-l", "app", "-c", "sleep 30"]`,
		`["su", "-P", "app"]`,
		`["sudo", "-n", "--", "runuser", "--pty", "app"]`,
	} {
		_, err := Parse([]byte(head + "argv = " + argv + "\n"))
		if err == nil || !strings.Contains(err.Error(), "operations.x.argv") || !strings.Contains(err.Error(), "new session") {
			t.Errorf("%s: %v, want a refusal saying setsid starts a new session", argv, err)
		}
	}
}

// systemd-run without --scope starts the program as a service of systemd's, out of the
// Ghost's reach (and the operation ends before it): refused. With --scope the program
// runs as its child, in the Ghost's process group: accepted.
func TestParseRefusesSystemdRunWithoutScope(t *testing.T) {
	head := "id = \"a.b\"\nname = \"n\"\nversion = \"1\"\n[operations.x]\ndescription = \"d\"\nidempotent = true\n"
	for argv, ok := range map[string]bool{
		`["systemd-run", "--", "sleep", "30"]`:                                                false,
		`["systemd-run", "-p", "Nice=5", "sleep", "30"]`:                                      false,
		`["sudo", "-n", "--", "systemd-run", "--wait", "--", "sleep", "30"]`:                  false,
		`["systemd-run", "--", "--scope", "sleep", "30"]`:                                     false, // --scope after its -- is the program's
		`["systemd-run", "--scope", "--", "sleep", "30"]`:                                     true,
		`["sudo", "-n", "--", "systemd-run", "--scope", "-p", "Nice=5", "--", "sleep", "30"]`: true,
	} {
		_, err := Parse([]byte(head + "argv = " + argv + "\n"))
		if ok && err != nil {
			t.Errorf("%s: %v, want it accepted", argv, err)
		}
		if !ok && (err == nil || !strings.Contains(err.Error(), "--scope")) {
			t.Errorf("%s: %v, want a refusal asking for --scope", argv, err)
		}
	}
}

// checkCodeArgs says where the arguments of the program the wrappers run begin: a "--"
// before that ends a wrapper's options, and Render does not take it for the program's.
func TestProgramArgsStart(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		want int
	}{
		{[]string{"grep", "-r", "--", "x"}, 1},
		{[]string{"sudo", "-n", "--", "kill", "-TERM", "1"}, 4},
		{[]string{"sudo", "-u", "app", "--", "kill", "1"}, 5},
		{[]string{"nice", "-n", "5", "timeout", "--", "5", "kill", "1"}, 7},
		{[]string{"env", "LANG=C", "--", "ls"}, 4},
		{[]string{"runuser", "-u", "app", "--", "/bin/sh", "-c", "kill \"$1\"", "sh", "1"}, 5},
		// su and runuser permute: the first "--" is theirs wherever it stands.
		{[]string{"su", "app", "--", "x"}, 3}, // the user's shell reads from after that --
		{[]string{"su", "app", "--", "-c", "kill \"$1\"", "sh", "1"}, 3},
		{[]string{"su", "--session-command", "kill \"$1\"", "app", "--", "sh", "1"}, 5}, // a literal command, its arguments
		{[]string{"runuser", "-u", "app", "kill", "--", "1"}, 5},
		{[]string{"runuser", "-u", "app", "-g", "app", "--", "kill", "--", "1"}, 7},
		{[]string{"flock", "/run/x.lock", "-c", "true", "--", "x"}, 4},
		{[]string{"setpriv", "--reuid=app", "--init-groups", "--", "kill", "-TERM", "1"}, 5},
		{[]string{"setpriv", "--reuid", "app", "--clear-groups", "kill", "--", "1"}, 5},
		// prlimit, numactl, systemd-run: options not read; their first "--" is theirs.
		{[]string{"prlimit", "--nofile=64", "--", "kill", "-TERM", "1"}, 4},
		{[]string{"prlimit", "--nofile=64", "kill", "--", "1"}, 5},
		{[]string{"numactl", "-N", "0", "kill", "--", "1"}, 6}, // no program found: no -- is kill's
		{[]string{"systemd-run", "--scope", "-p", "Nice=5", "--", "sudo", "-n", "--", "kill", "1"}, 9},
		{[]string{"taskset", "-p", "1"}, 2},
		{[]string{"ssh", "host", "uptime", "--", "x"}, 3}, // the remote command
		{[]string{"nice", "--"}, 2},                       // runs nothing
	} {
		tmpl := make([]element, len(tc.argv))
		for i, a := range tc.argv {
			el, err := parseElement(a)
			if err != nil {
				t.Fatal(err)
			}
			tmpl[i] = el
		}
		got, err := checkCodeArgs(tc.argv, tmpl)
		if err != nil || got != tc.want {
			t.Errorf("%q: %d %v, want %d", tc.argv, got, err, tc.want)
		}
	}
}

func TestProgramName(t *testing.T) {
	for in, want := range map[string]string{
		"sh": "sh", "/bin/bash": "bash", "bash-5.2": "bash", "python3": "python", "python3.12": "python",
		"/usr/bin/python3.12-dbg": "python", "python-dbg": "python", "pypy3": "pypy", "perl5.36.0": "perl",
		"lua5.4": "lua", "busybox": "busybox", "busybox.static": "busybox", "2to3": "2to3",
	} {
		if got := programName(in); got != want {
			t.Errorf("programName(%q) = %q, want %q", in, got, want)
		}
	}
}
