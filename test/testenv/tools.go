package testenv

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The external programs some tests run. .ci/run installs them and exports their paths.
const (
	// NATSServerEnv names the real nats-server binary.
	NATSServerEnv = "EDGE_NATS_SERVER"
	// NATSCLIEnv names the nats CLI binary.
	NATSCLIEnv = "EDGE_NATS_CLI"
)

// NATSServer returns the path of the real nats-server (EDGE_NATS_SERVER, else nats-server
// on PATH). Without one the test is skipped, or fails in CI (CI=true).
func NATSServer(t testing.TB) string {
	return tool(t, NATSServerEnv, "nats-server", "github.com/nats-io/nats-server/v2@v2.15.2")
}

// NATSCLI returns the path of the nats CLI (EDGE_NATS_CLI, else nats on PATH), with the
// same rule as NATSServer.
func NATSCLI(t testing.TB) string {
	return tool(t, NATSCLIEnv, "nats", "github.com/nats-io/natscli/nats@v0.5.0")
}

func tool(t testing.TB, env, name, pkg string) string {
	t.Helper()
	path := os.Getenv(env)
	if path == "" {
		path, _ = exec.LookPath(name)
	}
	if path != "" {
		if st, err := os.Stat(path); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return path
		}
	}
	msg := fmt.Sprintf("%s not found: set %s to its path or put it on PATH (GOBIN=/tmp/edgectl-tools go install %s; export %s=/tmp/edgectl-tools/%s)",
		name, env, pkg, env, name)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + "; .ci/run installs it")
	}
	t.Skip(msg)
	return ""
}

// RepoPath returns the path of a file or directory relative to the repository root.
func RepoPath(rel string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", filepath.FromSlash(rel))
}

// CopyConf copies a config file to dst, replacing each old string of pairs with its new
// one (ports, paths), and fails the test if an old string does not occur.
func CopyConf(t testing.TB, src, dst string, pairs ...string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(s, pairs[i]) {
			t.Fatalf("%s does not contain %q", src, pairs[i])
		}
		s = strings.ReplaceAll(s, pairs[i], pairs[i+1])
	}
	if err := os.WriteFile(dst, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// StartNATSServer runs the real nats-server with a config and waits until its monitoring
// endpoint (on httpPort) reports healthy; its pid file is conf + ".pid".
func StartNATSServer(t testing.TB, bin, conf string, httpPort int) *Process {
	t.Helper()
	p := Start(t, bin, "-c", conf, "-P", conf+".pid")
	WaitHealthy(t, p, httpPort)
	return p
}

// WaitHealthy waits until a nats-server's /healthz answers 200 (JetStream current).
func WaitHealthy(t testing.TB, p *Process, httpPort int) {
	t.Helper()
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", httpPort)
	client := http.Client{Timeout: time.Second}
	Eventually(t, 60*time.Second, "nats-server to be healthy at "+url, func() bool {
		select {
		case <-p.done:
			t.Fatalf("nats-server exited: %v\n%s", p.err, p.Output())
		default:
		}
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}
