package fs_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/edgectl/edgectl/ghost/seeds/internal/seedtest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost/seeds/fs"
)

// seed is the interface the Ghost calls, restated here so the test does not import ghost.
type seed interface {
	Info() bus.SeedInfo
	Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error)
}

var _ seed = (*fs.Seed)(nil)

func exec(s seed, op string, args map[string]string) (bus.Result, error) {
	return s.Execute(context.Background(), &bus.SeedExecute{SeedID: fs.ID, Operation: op, Args: args})
}

func kvArgs(kvs ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kvs); i += 2 {
		m[kvs[i]] = kvs[i+1]
	}
	return m
}

// fixture returns a seed rooted in a fresh directory, and a directory outside that root
// holding a file "secret", reachable from inside the root through symbolic links.
func fixture(t *testing.T) (s *fs.Seed, outside string) {
	t.Helper()
	base := t.TempDir()
	outside = filepath.Join(base, "outside")
	if err := os.Mkdir(outside, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s3cret"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := fs.New(filepath.Join(base, "state"))
	if err != nil {
		t.Fatal(err)
	}
	root := s.Root()
	links := map[string]string{
		"escape":       outside,                          // absolute, to a directory outside
		"escape-file":  filepath.Join(outside, "secret"), // absolute, to a file outside
		"up":           "../outside",                     // relative, to a directory outside
		"dangling":     filepath.Join(outside, "none"),   // to nothing
		"inside-alias": "sub",                            // relative, to a directory inside
	}
	if err := os.Mkdir(filepath.Join(root, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "sub", "kept"), []byte("kept"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	return s, outside
}

// TestExecute runs one scenario step by step on one root.
func TestExecute(t *testing.T) {
	type step struct {
		op     string
		args   map[string]string
		status string
		stdout string
		errIs  error
		field  string // a semantic refusal of this field is expected
		says   string // the failure's message holds this
	}
	long := strings.Repeat("a", fs.MaxPathLen+1)
	steps := []step{
		{op: "list", status: fs.StatusOK, stdout: `["sub/kept"]`},
		{op: "read", args: kvArgs("path", "missing.txt"), status: fs.StatusNotFound, errIs: fs.ErrFileNotFound},
		{op: "read", args: kvArgs("path", "sub/missing/deeper.txt"), status: fs.StatusNotFound, errIs: fs.ErrFileNotFound},
		{op: "write", args: kvArgs("path", "app/config.json", "content", `{"a":1}`), status: fs.StatusOK, stdout: `{"path":"app/config.json","bytes":7}`},
		{op: "write", args: kvArgs("path", "app/config.json", "content", `{"a":1}`), status: fs.StatusOK, stdout: `{"path":"app/config.json","bytes":7}`},
		{op: "read", args: kvArgs("path", "app/config.json"), status: fs.StatusOK, stdout: `{"a":1}`},
		{op: "write", args: kvArgs("path", "app/config.json", "content", "v2\n"), status: fs.StatusOK, stdout: `{"path":"app/config.json","bytes":3}`},
		{op: "read", args: kvArgs("path", "app/config.json"), status: fs.StatusOK, stdout: "v2\n"},
		{op: "write", args: kvArgs("path", "a.txt", "content", ""), status: fs.StatusOK, stdout: `{"path":"a.txt","bytes":0}`},
		{op: "read", args: kvArgs("path", "a.txt"), status: fs.StatusOK, stdout: ""},
		{op: "write", args: kvArgs("path", "a/b/c/d.txt", "content", "deep"), status: fs.StatusOK, stdout: `{"path":"a/b/c/d.txt","bytes":4}`},
		{op: "write", args: kvArgs("path", "inside-alias/new", "content", "via an inside link"), status: fs.StatusOK, stdout: `{"path":"inside-alias/new","bytes":18}`},
		{op: "read", args: kvArgs("path", "sub/new"), status: fs.StatusOK, stdout: "via an inside link"},
		{op: "list", status: fs.StatusOK, stdout: `["a.txt","a/b/c/d.txt","app/config.json","sub/kept","sub/new"]`},
		{op: "list", args: kvArgs("prefix", "a/"), status: fs.StatusOK, stdout: `["a/b/c/d.txt"]`},
		{op: "list", args: kvArgs("prefix", "app"), status: fs.StatusOK, stdout: `["app/config.json"]`},
		{op: "list", args: kvArgs("prefix", "a/b/c/d"), status: fs.StatusOK, stdout: `["a/b/c/d.txt"]`},
		{op: "list", args: kvArgs("prefix", "nothing"), status: fs.StatusOK, stdout: `[]`},
		{op: "delete", args: kvArgs("path", "a/b/c/d.txt"), status: fs.StatusOK, stdout: `{"path":"a/b/c/d.txt","deleted":true}`},
		{op: "delete", args: kvArgs("path", "a/b/c/d.txt"), status: fs.StatusOK, stdout: `{"path":"a/b/c/d.txt","deleted":false}`},
		{op: "read", args: kvArgs("path", "a/b/c/d.txt"), status: fs.StatusNotFound, errIs: fs.ErrFileNotFound},
		// The parents left empty went with the file, so "a" can now be a file.
		{op: "write", args: kvArgs("path", "a", "content", "now a file"), status: fs.StatusOK, stdout: `{"path":"a","bytes":10}`},
		{op: "read", args: kvArgs("path", "app"), status: fs.StatusFailed, says: "read app: is a directory; list shows what it holds"},
		{op: "delete", args: kvArgs("path", "app"), status: fs.StatusFailed, says: "delete app: is a directory"},
		{op: "write", args: kvArgs("path", "app", "content", "x"), status: fs.StatusFailed, says: "write app: is a directory; write replaces files"},
		{op: "write", args: kvArgs("path", "a/under-a-file", "content", "x"), status: fs.StatusFailed},

		// Paths refused before anything is touched.
		{op: "read", args: kvArgs("path", "../x"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", "/etc/passwd"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", "a/../../b"), status: fs.StatusFailed, field: "args.path"},
		{op: "write", args: kvArgs("path", "../escaped", "content", "x"), status: fs.StatusFailed, field: "args.path"},
		{op: "delete", args: kvArgs("path", "sub/../../outside/secret"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", ".."), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", "./a.txt"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", "a//b"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", "sub/"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", `sub\kept`), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", "sub/kept\x00"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", "a b"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", long), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", ""), status: fs.StatusFailed, field: "args.path"},
		{op: "read", status: fs.StatusFailed, field: "args.path"},

		// Symbolic links inside the root that lead out of it.
		{op: "read", args: kvArgs("path", "escape/secret"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", "escape-file"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", "up/secret"), status: fs.StatusFailed, field: "args.path"},
		{op: "write", args: kvArgs("path", "escape/planted", "content", "x"), status: fs.StatusFailed, field: "args.path"},
		{op: "write", args: kvArgs("path", "up/new/dir/planted", "content", "x"), status: fs.StatusFailed, field: "args.path"},
		{op: "write", args: kvArgs("path", "escape-file", "content", "overwritten"), status: fs.StatusFailed, field: "args.path"},
		{op: "delete", args: kvArgs("path", "escape/secret"), status: fs.StatusFailed, field: "args.path"},
		{op: "write", args: kvArgs("path", "dangling", "content", "x"), status: fs.StatusFailed, field: "args.path"},
		{op: "read", args: kvArgs("path", "dangling"), status: fs.StatusFailed, field: "args.path"},

		// Other refusals.
		{op: "write", args: kvArgs("path", "big", "content", strings.Repeat("x", fs.MaxContentSize+1)), status: fs.StatusFailed, field: "args.content"},
		{op: "write", args: kvArgs("path", "nocontent"), status: fs.StatusFailed, field: "args.content"},
		{op: "list", args: kvArgs("prefix", long), status: fs.StatusFailed, field: "args.prefix"},
		{op: "chmod", args: kvArgs("path", "a"), status: fs.StatusFailed, field: "operation"},

		{op: "list", status: fs.StatusOK, stdout: `["a","a.txt","app/config.json","sub/kept","sub/new"]`},
	}
	s, outside := fixture(t)
	for i, st := range steps {
		t.Run(fmt.Sprintf("%02d_%s_%s", i, st.op, st.args["path"]), func(t *testing.T) {
			res, err := exec(s, st.op, st.args)
			seedtest.CheckResult(t, res, err, seedtest.Want{Status: st.status, Stdout: st.stdout, Field: st.field, ErrIs: st.errIs, Says: st.says})
		})
	}

	// Nothing outside the root was touched.
	entries, err := os.ReadDir(outside)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "secret" {
		t.Fatalf("outside holds %v, want only secret", entries)
	}
	if data, _ := os.ReadFile(filepath.Join(outside, "secret")); string(data) != "s3cret" {
		t.Fatalf("outside/secret = %q, was changed", data)
	}
	// Written files are private, and no temporary file is left behind.
	fi, err := os.Stat(filepath.Join(s.Root(), "app", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", fi.Mode().Perm())
	}
	err = filepath.WalkDir(s.Root(), func(p string, d os.DirEntry, err error) error {
		if strings.Contains(d.Name(), "~") {
			t.Errorf("temporary file left behind: %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestNew(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		root    string
		wantErr bool
	}{
		{name: "missing root is created", root: filepath.Join(base, "state", "files")},
		{name: "existing root", root: base},
		{name: "empty root", root: "", wantErr: true},
		{name: "root is a file", root: file, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := fs.New(tc.root)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("New(%q) succeeded, want an error", tc.root)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(s.Root())
			if err != nil || !fi.IsDir() {
				t.Fatalf("root %s: %v", s.Root(), err)
			}
			if tc.root != base && fi.Mode().Perm() != 0o700 {
				t.Fatalf("created root mode = %v, want 0700", fi.Mode().Perm())
			}
		})
	}
}

func TestListIsJSON(t *testing.T) {
	tests := []struct {
		name      string
		files     int
		nameLen   int
		truncated bool
	}{
		{name: "none", files: 0, nameLen: 8},
		{name: "a few", files: 5, nameLen: 8},
		{name: "more than fits in stdout", files: 300, nameLen: 240, truncated: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := fs.New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for i := range tc.files {
				p := fmt.Sprintf("d/%05d", i) + strings.Repeat("f", tc.nameLen-5)
				want = append(want, p)
				if err := os.MkdirAll(filepath.Join(s.Root(), "d"), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(s.Root(), filepath.FromSlash(p)), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			// Neither a stray temporary file nor a name read cannot take is listed.
			for _, junk := range []string{".seed-fs-tmp~X", "has space", "tilde~"} {
				if err := os.WriteFile(filepath.Join(s.Root(), junk), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			res, err := exec(s, "list", nil)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			if err := json.Unmarshal([]byte(res.Stdout), &got); err != nil {
				t.Fatalf("stdout is not a JSON array: %v: %.100q", err, res.Stdout)
			}
			if len(res.Stdout) > bus.MaxOutput {
				t.Fatalf("stdout is %d bytes, over %d", len(res.Stdout), bus.MaxOutput)
			}
			if res.Truncated != tc.truncated {
				t.Fatalf("truncated = %v, want %v", res.Truncated, tc.truncated)
			}
			if !tc.truncated && !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
				t.Fatalf("paths = %v, want %v", got, want)
			}
			if tc.truncated && (len(got) == 0 || len(got) >= len(want) || !slices.Equal(got, want[:len(got)])) {
				t.Fatalf("got %d paths, want a sorted head of the %d written", len(got), len(want))
			}
		})
	}
}

func TestReadLargeFileIsCut(t *testing.T) {
	s, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		size      int
		truncated bool
	}{
		{name: "exactly the output limit", size: bus.MaxOutput},
		{name: "over the output limit", size: 3 * bus.MaxOutput, truncated: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(s.Root(), "large"), []byte(strings.Repeat("x", tc.size)), 0o600); err != nil {
				t.Fatal(err)
			}
			res, err := exec(s, "read", kvArgs("path", "large"))
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Stdout) != bus.MaxOutput || res.Truncated != tc.truncated {
				t.Fatalf("stdout %d bytes, truncated %v; want %d bytes, truncated %v", len(res.Stdout), res.Truncated, bus.MaxOutput, tc.truncated)
			}
		})
	}
}

func TestConcurrentWritesAreAtomic(t *testing.T) {
	s, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	contents := []string{strings.Repeat("a", 32<<10), strings.Repeat("b", 32<<10)}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if _, err := exec(s, "write", kvArgs("path", "shared", "content", contents[i%2])); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			res, err := exec(s, "read", kvArgs("path", "shared"))
			if err == nil && !slices.Contains(contents, res.Stdout) {
				t.Errorf("read a partial or mixed file of %d bytes", len(res.Stdout))
			}
		})
	}
	wg.Wait()
}

func TestCancelledContext(t *testing.T) {
	s, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, op := range []string{"write", "read", "delete", "list"} {
		res, err := s.Execute(ctx, &bus.SeedExecute{Operation: op, Args: kvArgs("path", "x", "content", "y")})
		if !errors.Is(err, context.Canceled) || res.ExitCode != 1 {
			t.Fatalf("%s: result = %+v, err = %v; want context.Canceled", op, res, err)
		}
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "x")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("write ran under a cancelled context")
	}
}

func TestDeclaration(t *testing.T) {
	s, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	seedtest.CheckDeclaration(t, s.Info(), fs.ID, map[string]bool{"write": true, "read": true, "delete": true, "list": true})
}

func TestPatterns(t *testing.T) {
	s, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		op, param, value string
		match            bool
	}{
		{"read", "path", "app/config.json", true},
		{"read", "path", strings.Repeat("p", fs.MaxPathLen), true},
		{"read", "path", strings.Repeat("p", fs.MaxPathLen+1), false},
		{"read", "path", "", false},
		{"read", "path", `a\b`, false},
		{"read", "path", "a\x00b", false},
		{"read", "path", "a b", false},
		{"write", "content", "", true},
		{"write", "content", "multi\nline", true},
		{"list", "prefix", "", true},
		{"list", "prefix", "app/", true},
	}
	info := s.Info()
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
			t.Errorf("%s.%s pattern %q on %.40q: match = %v, want %v", tc.op, tc.param, pattern, tc.value, got, tc.match)
		}
	}
}

// Deleting a file through a symbolic link to a directory inside the root removes the
// file, not the link: the parents left empty are removed only when they are directories.
func TestDeleteThroughALinkedDirectoryKeepsTheLink(t *testing.T) {
	s, _ := fixture(t) // inside-alias -> sub, which holds kept
	if _, err := exec(s, "write", kvArgs("path", "sub/gone", "content", "x")); err != nil {
		t.Fatal(err)
	}
	if _, err := exec(s, "delete", kvArgs("path", "inside-alias/gone")); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(s.Root(), "inside-alias")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the link inside-alias after a delete through it: %v, %v; want it kept", fi, err)
	}
	if res, err := exec(s, "read", kvArgs("path", "inside-alias/kept")); err != nil || res.Stdout != "kept" {
		t.Fatalf("read through the link after the delete: %q, %v", res.Stdout, err)
	}
}

// A write and a delete racing in one directory (the delete removing the directory it left
// empty while the write makes its file there) do not fail the write.
func TestWriteRacingADeleteInItsDirectory(t *testing.T) {
	s, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		if _, err := exec(s, "write", kvArgs("path", "a/y", "content", "y")); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			if _, err := exec(s, "delete", kvArgs("path", "a/y")); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			if _, err := exec(s, "write", kvArgs("path", "a/x", "content", "x")); err != nil {
				t.Errorf("round %d: write beside a delete: %v", i, err)
			}
		})
		wg.Wait()
		if _, err := exec(s, "delete", kvArgs("path", "a/x")); err != nil {
			t.Fatal(err)
		}
	}
}

// An error about a dangling link names the path given, not where the link leads.
func TestDanglingLinkErrorNamesNoHostPath(t *testing.T) {
	s, outside := fixture(t)
	_, err := exec(s, "read", kvArgs("path", "dangling"))
	if err == nil || strings.Contains(err.Error(), outside) {
		t.Fatalf("read through a dangling link: %v; want a refusal naming no host path", err)
	}
}
