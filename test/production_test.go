package test

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/test/testenv"
)

// execRun runs bin with args and extra environment and waits (at most 60 s).
func execRun(t *testing.T, bin string, env []string, args ...string) run {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// An empty EDGE_ variable would still override a config key, so they are left out.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EDGE_") && !strings.HasPrefix(kv, "NATS_URL=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := run{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %v: %v", filepath.Base(bin), args, err)
	}
	t.Logf("%s %s: exit %d\nstdout:\n%sstderr:\n%s", filepath.Base(bin), strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// 'miragectl up --production' refuses to start without TLS or auth: exit 2, one line.
func TestUpProductionRefusesWithoutTLS(t *testing.T) {
	miragectl, _ := testenv.Binaries(t)
	pki := testenv.NewPKI(t)
	srv := pki.Server()
	data := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no certificate", []string{"--production", "--auth"}, "production mode needs TLS: pass --tls-cert and --tls-key"},
		{"no key", []string{"--production", "--auth", "--tls-cert", srv.Cert}, "production mode needs TLS: pass --tls-cert and --tls-key"},
		{"no auth", []string{"--production", "--tls-cert", srv.Cert, "--tls-key", srv.Key}, "production mode needs authentication: pass --auth"},
		{"plaintext server", []string{"--production", "--auth", "--server", "nats://127.0.0.1:4222"}, "production mode refuses plaintext --server nats://127.0.0.1:4222"},
		{"missing certificate file", []string{"--production", "--auth", "--tls-cert", filepath.Join(data, "none.pem"), "--tls-key", srv.Key}, "--tls-cert: TLS certificate " + filepath.Join(data, "none.pem") + ": cannot read"},
		{"mTLS without CA", []string{"--auth", "--tls-cert", srv.Cert, "--tls-key", srv.Key, "--tls-verify-clients"}, "--tls-verify-clients needs --tls-ca"},
		{"mTLS without auth", []string{"--tls-cert", srv.Cert, "--tls-key", srv.Key, "--tls-ca", pki.CA, "--tls-verify-clients"}, "--tls-verify-clients maps client certificates to enrolled Ghosts: it needs --auth"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"up", "--data-dir", data}
			if !slices.Contains(tt.args, "--server") { // --nats-listen does not apply with --server
				args = append(args, "--nats-listen", "127.0.0.1:0")
			}
			r := execRun(t, miragectl, nil, append(args, tt.args...)...)
			if r.code != 2 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 and one line with %q", r.code, r.stderr, tt.want)
			}
		})
	}
}

// A production Ghost refuses, at start, a plaintext server URL or a missing CA; its TLS
// files must be usable and its certificate must name it; it needs an identity and the
// Mirage keys whose signatures it accepts. The message names the file and key.
func TestGhostProductionRefusesPlaintext(t *testing.T) {
	_, ghostctl := testenv.Binaries(t)
	pki := testenv.NewPKI(t)
	mine, other := pki.Ghost("edge-1"), pki.Ghost("edge-2")
	dir := t.TempDir()
	tests := []struct {
		name, body, key, want string
	}{
		{"plaintext URL", `production = true
server = "nats://127.0.0.1:4222"
tls_ca = "` + pki.CA + `"`, "server", "production mode refuses plaintext nats://127.0.0.1:4222: use tls://HOST:PORT"},
		{"no CA", `production = true
server = "tls://127.0.0.1:4222"`, "tls_ca", "production mode needs the CA file"},
		{"unreadable CA", `server = "tls://127.0.0.1:4222"
tls_ca = "missing-ca.pem"`, "tls_ca", filepath.Join(dir, "missing-ca.pem") + ": cannot read"},
		{"certificate of another Ghost", `production = true
server = "tls://127.0.0.1:4222"
tls_ca = "` + pki.CA + `"
tls_cert = "` + other.Cert + `"
tls_key = "` + other.Key + `"`, "tls_cert", `must have the subject "CN=edge-1,OU=ghost,O=edgectl"`},
		{"certificate without key", `server = "tls://127.0.0.1:4222"
tls_cert = "` + mine.Cert + `"`, "tls_key", "without its private key"},
		{"no trusted Mirage key", `production = true
server = "tls://127.0.0.1:4222"
tls_ca = "` + pki.CA + `"
tls_cert = "` + mine.Cert + `"
tls_key = "` + mine.Key + `"`, "trusted_mirage_keys", "production mode runs only commands signed by a trusted Mirage"},
		{"no identity", `production = true
server = "tls://127.0.0.1:4222"
tls_ca = "` + pki.CA + `"
trusted_mirage_keys = ["` + newIdentity(t).PublicKey() + `"]`, "auth", "production mode needs the Ghost's identity"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("config-%d.toml", i))
			body := "id = \"edge-1\"\nstate_dir = \"state\"\npolicy = \"headless\"\n" + tt.body + "\n"
			if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			r := execRun(t, ghostctl, nil, "run", "--config", path)
			want := fmt.Sprintf("config %s: key %q: ", path, tt.key)
			if r.code != 2 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, tt.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 with %q and %q", r.code, r.stderr, want, tt.want)
			}
		})
	}
}

// The runbook of docs/security.md, with the real binaries: 'miragectl up --production'
// with mTLS, a Ghost made by 'ghostctl init', enrolled with 'fleet add', running in
// production mode with its certificate, serves an intent issued with the operator key.
// A client that does not trust the CA is refused (exit 3).
func TestProductionRunbook(t *testing.T) {
	miragectl, ghostctl := testenv.Binaries(t)
	pki := testenv.NewPKI(t)
	srv := pki.Server()
	data := filepath.Join(t.TempDir(), "mirage")
	up := testenv.Start(t, miragectl, "up", "--production", "--auth", "--data-dir", data, "--nats-listen", "127.0.0.1:0",
		"--tls-cert", srv.Cert, "--tls-key", srv.Key, "--tls-ca", pki.CA, "--tls-verify-clients")
	urlRE := regexp.MustCompile(`edgectl is up: NATS at (tls://127\.0\.0\.1:\d+);`)
	var url string
	testenv.Eventually(t, 30*time.Second, "miragectl up to serve", func() bool {
		if m := urlRE.FindStringSubmatch(up.Output()); m != nil {
			url = m[1]
		}
		return url != ""
	})
	operatorKey := filepath.Join(data, "keys", "operator.nk")
	mirageKey, err := bus.LoadIdentity(filepath.Join(data, "keys", "mirage.nk"))
	if err != nil {
		t.Fatal(err)
	}
	opCert := pki.Client(pkix.Name{CommonName: "operator", OrganizationalUnit: []string{bus.CertUnitOperator}, Organization: []string{bus.CertOrganization}})
	opEnv := []string{"EDGE_TLS_CA=" + pki.CA, "EDGE_TLS_CERT=" + opCert.Cert, "EDGE_TLS_KEY=" + opCert.Key, "EDGE_NKEY=" + operatorKey}

	// Without the CA, a client cannot even connect.
	if r := execRun(t, miragectl, nil, "ghosts", "--server", url, "--nkey", operatorKey); r.code != 3 || !strings.Contains(r.stderr, "certificate") {
		t.Fatalf("a client without the CA: exit %d, stderr %q; want 3 and a certificate error", r.code, r.stderr)
	}

	gdir := filepath.Join(t.TempDir(), "edge-1")
	r := execRun(t, ghostctl, nil, "init", "--id", "edge-1", "--out", gdir, "--server", url, "--seeds", "seed.flow", "--trust", mirageKey.PublicKey())
	if r.code != 0 {
		t.Fatalf("ghostctl init: exit %d", r.code)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	pub := lines[len(lines)-1]
	// Production mode and the Ghost's certificate; top-level keys go before any table.
	cert := pki.Ghost("edge-1")
	cfgPath := filepath.Join(gdir, "config.toml")
	body, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	extra := fmt.Sprintf("production = true\ntls_ca = %q\ntls_cert = %q\ntls_key = %q\n", pki.CA, cert.Cert, cert.Key)
	if err := os.WriteFile(cfgPath, append([]byte(extra), body...), 0o600); err != nil {
		t.Fatal(err)
	}

	if r := execRun(t, miragectl, opEnv, "fleet", "add", "edge-1", pub, "--server", url); r.code != 0 {
		t.Fatalf("fleet add: exit %d", r.code)
	}
	testenv.Start(t, ghostctl, "run", "--config", cfgPath)
	var last run
	testenv.Eventually(t, 30*time.Second, "edge-1 to serve an intent over mTLS", func() bool {
		last = execRun(t, miragectl, opEnv, "issue", "--target", "edge-1", "seed.flow", "echo", "message=over-mtls", "--timeout", "5s", "--server", url)
		if last.code != 0 {
			time.Sleep(250 * time.Millisecond) // edge-1 may not have registered yet
		}
		return last.code == 0
	})
	if !strings.Contains(last.stdout, "over-mtls") {
		t.Fatalf("issue output %q does not carry the echo", last.stdout)
	}
	if code := up.Stop(30 * time.Second); code != 0 {
		t.Errorf("miragectl up exited %d after SIGTERM", code)
	}
}
