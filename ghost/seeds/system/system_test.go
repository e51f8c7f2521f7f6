package system

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/edgectl/edgectl/ghost/seeds/internal/seedtest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// seed is the interface the Ghost calls, restated here so the test does not import ghost.
type seed interface {
	Info() bus.SeedInfo
	Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error)
}

var _ seed = New("/")

func exec(s seed, op string, args map[string]string) (bus.Result, error) {
	return s.Execute(context.Background(), &bus.SeedExecute{SeedID: ID, Operation: op, Args: args})
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// fakeProc builds a procfs fixture: files maps a path under it to its content.
func fakeProc(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		writeFile(t, filepath.Join(dir, filepath.FromSlash(name)), content)
	}
	return dir
}

const meminfo = `MemTotal:       16318480 kB
MemFree:         1021468 kB
MemAvailable:    9872344 kB
Buffers:          512000 kB
Cached:          7000000 kB
HugePages_Total:       0
`

// TestExecuteOnFixture checks the exact outputs against a procfs fixture.
func TestExecuteOnFixture(t *testing.T) {
	tests := []struct {
		name   string
		files  map[string]string
		op     string
		stdout string
		fails  bool
	}{
		{name: "uptime", op: "uptime", files: map[string]string{"uptime": "350735.47 1234567.89\n"},
			stdout: `{"seconds":350735.47,"human":"4d 1h 25m 35s"}`},
		{name: "uptime short", op: "uptime", files: map[string]string{"uptime": "59.99 1.00\n"},
			stdout: `{"seconds":59.99,"human":"59s"}`},
		{name: "uptime garbled", op: "uptime", files: map[string]string{"uptime": "soon\n"}, fails: true},
		{name: "uptime empty", op: "uptime", files: map[string]string{"uptime": ""}, fails: true},
		{name: "uptime missing", op: "uptime", files: map[string]string{}, fails: true},
		{name: "memory", op: "memory_usage", files: map[string]string{"meminfo": meminfo},
			stdout: `{"total_bytes":16710123520,"available_bytes":10109280256,"used_bytes":6600843264}`},
		{name: "memory without MemAvailable", op: "memory_usage", files: map[string]string{"meminfo": "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n"},
			stdout: `{"total_bytes":1024000,"available_bytes":409600,"used_bytes":614400}`},
		{name: "memory without MemTotal", op: "memory_usage", files: map[string]string{"meminfo": "MemFree: 100 kB\n"}, fails: true},
		{name: "memory missing", op: "memory_usage", files: map[string]string{}, fails: true},
		{name: "processes", op: "process_list", files: map[string]string{
			"1/comm":    "systemd\n",
			"1000/comm": "nats-server\n",
			"42/comm":   "quote\"d <name>\n",
			"7/stat":    "7 (gone) Z", // no comm: the process ended while listing
			"self/comm": "not a pid\n",
			"99":        "a file, not a process directory",
		}, stdout: `[{"pid":1,"name":"systemd"},{"pid":42,"name":"quote\"d \u003cname\u003e"},{"pid":1000,"name":"nats-server"}]`},
		{name: "no processes", op: "process_list", files: map[string]string{"uptime": "1 1"}, stdout: `[]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New(t.TempDir())
			s.proc = fakeProc(t, tc.files)
			res, err := exec(s, tc.op, nil)
			if tc.fails {
				var pe *bus.Error
				if err == nil || errors.As(err, &pe) || res.Status != StatusFailed || res.ExitCode != 1 || res.Stderr == "" {
					t.Fatalf("result = %+v, err = %v; want a plain error, failed, exit 1, stderr", res, err)
				}
				return
			}
			want := bus.Result{Status: StatusOK, Stdout: tc.stdout}
			if err != nil || res != want {
				t.Fatalf("result = %+v, err = %v; want %+v", res, err, want)
			}
		})
	}
}

func TestProcessListIsCapped(t *testing.T) {
	tests := []struct {
		name      string
		pids, max int
		truncated bool
	}{
		{name: "under the cap", pids: 3, max: 5},
		{name: "at the cap", pids: 5, max: 5},
		{name: "over the cap", pids: 8, max: 5, truncated: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{}
			for pid := 1; pid <= tc.pids; pid++ {
				files[strconv.Itoa(pid)+"/comm"] = "p\n"
			}
			s := New(t.TempDir())
			s.proc = fakeProc(t, files)
			s.maxProcs = tc.max
			res, err := exec(s, "process_list", nil)
			if err != nil {
				t.Fatal(err)
			}
			var procs []Process
			if err := json.Unmarshal([]byte(res.Stdout), &procs); err != nil {
				t.Fatal(err)
			}
			want := min(tc.pids, tc.max)
			if len(procs) != want || res.Truncated != tc.truncated {
				t.Fatalf("%d processes, truncated %v; want %d, truncated %v", len(procs), res.Truncated, want, tc.truncated)
			}
			if procs[0].PID != 1 || procs[len(procs)-1].PID != want {
				t.Fatalf("pids run %d..%d, want 1..%d", procs[0].PID, procs[len(procs)-1].PID, want)
			}
		})
	}
}

// TestExecuteOnHost runs every operation on the real host and checks the shape of the
// outputs.
func TestExecuteOnHost(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	dir := t.TempDir()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		op    string
		check func(t *testing.T, stdout string)
	}{
		{op: "hostname", check: func(t *testing.T, stdout string) {
			if stdout != host {
				t.Fatalf("hostname = %q, want %q", stdout, host)
			}
		}},
		{op: "uptime", check: func(t *testing.T, stdout string) {
			var u Uptime
			if err := json.Unmarshal([]byte(stdout), &u); err != nil || u.Seconds <= 0 || u.Human == "" {
				t.Fatalf("uptime = %s (%v)", stdout, err)
			}
		}},
		{op: "disk_usage", check: func(t *testing.T, stdout string) {
			var d DiskUsage
			if err := json.Unmarshal([]byte(stdout), &d); err != nil {
				t.Fatal(err)
			}
			if d.Path != dir || d.TotalBytes == 0 || d.UsedBytes+d.FreeBytes > d.TotalBytes || d.UsedPercent < 0 || d.UsedPercent > 100 {
				t.Fatalf("disk_usage = %s", stdout)
			}
		}},
		{op: "memory_usage", check: func(t *testing.T, stdout string) {
			var m MemoryUsage
			if err := json.Unmarshal([]byte(stdout), &m); err != nil {
				t.Fatal(err)
			}
			if m.TotalBytes == 0 || m.AvailableBytes > m.TotalBytes || m.UsedBytes != m.TotalBytes-m.AvailableBytes {
				t.Fatalf("memory_usage = %s", stdout)
			}
		}},
		{op: "process_list", check: func(t *testing.T, stdout string) {
			var procs []Process
			if err := json.Unmarshal([]byte(stdout), &procs); err != nil {
				t.Fatal(err)
			}
			self := false
			for i, p := range procs {
				if i > 0 && p.PID <= procs[i-1].PID {
					t.Fatalf("pids not sorted: %d after %d", p.PID, procs[i-1].PID)
				}
				self = self || p.PID == os.Getpid()
			}
			if len(procs) < MaxProcesses && !self {
				t.Fatalf("this test's own pid %d is not listed", os.Getpid())
			}
		}},
	}
	s := New(dir)
	for _, tc := range tests {
		t.Run(tc.op, func(t *testing.T) {
			res, err := exec(s, tc.op, nil)
			if err != nil || res.Status != StatusOK || res.ExitCode != 0 {
				t.Fatalf("result = %+v, err = %v", res, err)
			}
			tc.check(t, res.Stdout)
		})
	}
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name   string
		dir    string
		op     string
		args   map[string]string
		field  string // non-empty: a semantic refusal of this field
		expect error  // otherwise: a plain error matching this, or any if nil
	}{
		{name: "unknown operation", dir: "/", op: "reboot", field: "operation"},
		{name: "undeclared arg", dir: "/", op: "hostname", args: map[string]string{"b": "1", "a": "1"}, field: "args.a"},
		{name: "disk_usage of a missing directory", dir: "/nonexistent/seed-system-test", op: "disk_usage", expect: os.ErrNotExist},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := exec(New(tc.dir), tc.op, tc.args)
			if err == nil || res.Status != StatusFailed || res.ExitCode != 1 || res.Stderr == "" {
				t.Fatalf("result = %+v, err = %v; want failed, exit 1 and a stderr", res, err)
			}
			var pe *bus.Error
			if tc.field != "" {
				if !errors.As(err, &pe) || pe.Code != bus.CodeSemantic || pe.Field != tc.field {
					t.Fatalf("err = %v, want a semantic error on %s", err, tc.field)
				}
				return
			}
			if errors.As(err, &pe) {
				t.Fatalf("err = %v, want a plain error", err)
			}
			if tc.expect != nil && !errors.Is(err, tc.expect) {
				t.Fatalf("err = %v, want %v", err, tc.expect)
			}
		})
	}
}

func TestCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, op := range []string{"hostname", "uptime", "disk_usage", "memory_usage", "process_list"} {
		res, err := New("/").Execute(ctx, &bus.SeedExecute{Operation: op})
		if !errors.Is(err, context.Canceled) || res.ExitCode != 1 {
			t.Fatalf("%s: result = %+v, err = %v; want context.Canceled", op, res, err)
		}
	}
}

func TestHuman(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{59 * time.Second, "59s"},
		{5 * time.Minute, "5m 0s"},
		{time.Hour + time.Second, "1h 0m 1s"},
		{3*24*time.Hour + 4*time.Hour + 5*time.Minute + 6*time.Second, "3d 4h 5m 6s"},
	}
	for _, tc := range tests {
		if got := human(tc.d); got != tc.want {
			t.Errorf("human(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestDeclaration(t *testing.T) {
	info := New("/").Info()
	seedtest.CheckDeclaration(t, info, ID, map[string]bool{"hostname": true, "uptime": true, "disk_usage": true, "memory_usage": true, "process_list": true})
	for _, op := range info.Operations { // seed.system is read-only and takes no params
		if op.Params == nil || len(op.Params) != 0 {
			t.Errorf("operation %s: params = %#v, want an empty list", op.Name, op.Params)
		}
	}
}
