package test

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/test/testenv"
)

// freePort returns a loopback port nothing listens on (it was free a moment ago).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	return port
}

// 'up --server' with nothing listening there fails at once, saying the server cannot be
// reached (exit 3), rather than after provisioning timed out half a minute later.
func TestUpAgainstAnUnreachableServerFailsAtOnce(t *testing.T) {
	mctl, _ := testenv.Binaries(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	start := time.Now()
	r := execRun(t, mctl, nil, "up", "--server", url, "--no-local-ghost", "--data-dir", filepath.Join(t.TempDir(), "data"))
	took := time.Since(start)
	if r.code != 3 || !strings.Contains(r.stderr, "NATS at "+url+" cannot be reached") || took > 10*time.Second {
		t.Fatalf("exit %d after %s, stderr %q; want exit 3 within 10s saying NATS at %s cannot be reached", r.code, took.Round(time.Millisecond), r.stderr, url)
	}
}
