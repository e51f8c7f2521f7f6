package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/test/testenv"
)

// Every nats-server config in deploy/nats passes 'nats-server -t', and so does tls.conf,
// alone and included, once certificates exist; the example Ghost config loads; the
// systemd units carry their hardening.
func TestDeployFilesValid(t *testing.T) {
	natsServer := testenv.NATSServer(t)
	_, ghostctl := testenv.Binaries(t)
	dir := testenv.RepoPath("deploy/nats")
	confs, err := filepath.Glob(filepath.Join(dir, "*.conf"))
	if err != nil || len(confs) < 6 {
		t.Fatalf("deploy/nats holds %v (%v); want single, cluster-1..3, auth and tls", confs, err)
	}
	tmp := t.TempDir()
	pki := testenv.NewPKI(t)
	files := pki.Server()
	testenv.CopyConf(t, filepath.Join(dir, "tls.conf"), filepath.Join(tmp, "tls.conf"),
		"/etc/nats/tls/server.pem", files.Cert, "/etc/nats/tls/server-key.pem", files.Key, "/etc/nats/tls/ca.pem", pki.CA)
	testenv.CopyConf(t, filepath.Join(dir, "auth.conf"), filepath.Join(tmp, "auth.conf"))
	for _, conf := range confs {
		name := filepath.Base(conf)
		if name != "tls.conf" {
			checkConf(t, natsServer, conf)
			if name == "auth.conf" {
				continue
			}
			// The TLS variant: the same file with tls.conf included.
			variant := filepath.Join(tmp, name)
			testenv.CopyConf(t, conf, variant, `# include "tls.conf"`, `include "tls.conf"`)
			checkConf(t, natsServer, variant)
		}
	}
	checkConf(t, natsServer, filepath.Join(tmp, "tls.conf"))

	r := execRun(t, ghostctl, []string{"EDGE_STATE_DIR=" + filepath.Join(tmp, "state")}, "seeds", "--config", testenv.RepoPath("deploy/config/ghost.toml"))
	if r.code != 0 || !strings.Contains(r.stdout, "seed.kv") {
		t.Errorf("deploy/config/ghost.toml does not load: exit %d, %s", r.code, r.stderr)
	}
	for _, unit := range []string{"ghostctl.service", "miragectl.service"} {
		body, err := os.ReadFile(testenv.RepoPath("deploy/systemd/" + unit))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"\nUser=edgectl\n", "\nNoNewPrivileges=yes\n", "\nProtectSystem=strict\n", "\nReadWritePaths=/var/lib/edgectl", "\nRestart=on-failure\n", "\nExecStart=/usr/local/bin/"} {
			if !strings.Contains(string(body), want) {
				t.Errorf("%s lacks %q", unit, strings.TrimSpace(want))
			}
		}
	}
}

func checkConf(t *testing.T, natsServer, conf string) {
	t.Helper()
	if r := execRun(t, natsServer, nil, "-t", "-c", conf); r.code != 0 || !strings.Contains(r.stdout+r.stderr, "is valid") {
		t.Errorf("nats-server -t -c %s: exit %d: %s%s", conf, r.code, r.stdout, r.stderr)
	}
}

// natsDeploy is deploy/nats copied to a temp dir with its ports and store paths moved, as
// deploy/README.md does by hand: the real nats-server runs it here.
type natsDeploy struct {
	t                *testing.T
	bin, dir         string
	ports            map[int]int // canonical port of deploy/nats → the free one used here
	miragectl, ghost string
	operator         string // operator key file
	mirageKey        string // Mirage's public key
	dataDir          string // Mirage's data_dir
}

func newNATSDeploy(t *testing.T) *natsDeploy {
	bin := testenv.NATSServer(t) // skips before the build when there is none
	miragectl, ghostctl := testenv.Binaries(t)
	d := &natsDeploy{t: t, bin: bin, dir: t.TempDir(), ports: map[int]int{},
		miragectl: miragectl, ghost: ghostctl}
	d.dataDir = filepath.Join(d.dir, "mirage")
	d.operator = filepath.Join(d.dataDir, "keys", "operator.nk")
	return d
}

// copyConf copies deploy/nats/name with its ports (4222-4224 clients, 6222-6224 routes,
// 8222-8224 monitoring) and its store moved.
func (d *natsDeploy) copyConf(name string) string {
	src := testenv.RepoPath("deploy/nats/" + name)
	body, err := os.ReadFile(src)
	if err != nil {
		d.t.Fatal(err)
	}
	var pairs []string
	for _, base := range []int{4222, 6222, 8222} {
		for canonical := base; canonical < base+3; canonical++ {
			if _, ok := d.ports[canonical]; !ok {
				d.ports[canonical] = testenv.FreePort(d.t)
			}
			if addr := fmt.Sprintf("127.0.0.1:%d", canonical); strings.Contains(string(body), addr) {
				pairs = append(pairs, addr, fmt.Sprintf("127.0.0.1:%d", d.ports[canonical]))
			}
		}
	}
	pairs = append(pairs, "/var/lib/nats/", d.dir+"/")
	dst := filepath.Join(d.dir, name)
	testenv.CopyConf(d.t, src, dst, pairs...)
	return dst
}

func (d *natsDeploy) url(canonical int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", d.ports[canonical])
}

// bootstrap makes Mirage's and the operator's keys with a short embedded run and writes
// the first auth.conf (deploy/README.md, "Keys and the first auth.conf").
func (d *natsDeploy) bootstrap() {
	t := d.t
	boot := testenv.Start(t, d.miragectl, "up", "--auth", "--no-local-ghost", "--data-dir", d.dataDir, "--nats-listen", "127.0.0.1:0")
	url := waitUp(t, boot)
	d.authConfig(url)
	if code := boot.Stop(30 * time.Second); code != 0 {
		t.Fatalf("bootstrap up exited %d", code)
	}
	if err := os.RemoveAll(filepath.Join(d.dataDir, "jetstream")); err != nil {
		t.Fatal(err)
	}
	id, err := bus.LoadIdentity(filepath.Join(d.dataDir, "keys", "mirage.nk"))
	if err != nil {
		t.Fatal(err)
	}
	d.mirageKey = id.PublicKey()
}

// authConfig writes auth.conf from 'miragectl fleet auth-config'.
func (d *natsDeploy) authConfig(url string) {
	r := execRun(d.t, d.miragectl, nil, "fleet", "auth-config", "--server", url, "--nkey", d.operator)
	if r.code != 0 || !strings.Contains(r.stdout, "accounts {") {
		d.t.Fatalf("fleet auth-config: exit %d", r.code)
	}
	if err := os.WriteFile(filepath.Join(d.dir, "auth.conf"), []byte(r.stdout), 0o600); err != nil {
		d.t.Fatal(err)
	}
}

// enroll makes a Ghost with 'ghostctl init', enrolls it, and returns its config path.
func (d *natsDeploy) enroll(id, urls string) string {
	dir := filepath.Join(d.dir, id)
	r := execRun(d.t, d.ghost, nil, "init", "--id", id, "--out", dir, "--server", urls, "--trust", d.mirageKey, "--seeds", "seed.flow,seed.kv")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) == 0 {
		d.t.Fatalf("ghostctl init %s: exit %d", id, r.code)
	}
	if r := execRun(d.t, d.miragectl, nil, "fleet", "add", id, lines[len(lines)-1], "--server", urls, "--nkey", d.operator); r.code != 0 {
		d.t.Fatalf("fleet add %s: exit %d", id, r.code)
	}
	return filepath.Join(dir, "config.toml")
}

// reload re-reads auth.conf on a running server, as an operator does after fleet add.
func (d *natsDeploy) reload(conf string) {
	if r := execRun(d.t, d.bin, nil, "--signal", "reload="+conf+".pid"); r.code != 0 {
		d.t.Fatalf("nats-server --signal reload: exit %d", r.code)
	}
}

var upURL = regexp.MustCompile(`edgectl is up: NATS at (\S+);`)

// waitUp waits for 'miragectl up' to say it is up and returns the URL it printed.
func waitUp(t *testing.T, p *testenv.Process) string {
	t.Helper()
	var url string
	testenv.Eventually(t, 60*time.Second, "miragectl up to serve", func() bool {
		if m := upURL.FindStringSubmatch(p.Output()); m != nil {
			url = m[1]
		}
		return url != ""
	})
	return url
}

// waitOnline waits until 'miragectl ghosts --json' lists every id online.
func (d *natsDeploy) waitOnline(urls string, ids ...string) {
	testenv.Eventually(d.t, 30*time.Second, strings.Join(ids, ", ")+" online", func() bool {
		r := execRun(d.t, d.miragectl, nil, "ghosts", "--json", "--server", urls, "--nkey", d.operator)
		var ghosts []struct {
			GhostID string `json:"ghost_id"`
			Status  string `json:"status"`
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &ghosts) != nil {
			time.Sleep(250 * time.Millisecond)
			return false
		}
		online := 0
		for _, g := range ghosts {
			for _, id := range ids {
				if g.GhostID == id && g.Status == "online" {
					online++
				}
			}
		}
		if online < len(ids) {
			time.Sleep(250 * time.Millisecond)
		}
		return online == len(ids)
	})
}

// issueJSON runs 'miragectl issue --json' and returns the report it printed.
func (d *natsDeploy) issueJSON(urls string, args ...string) (bus.Report, run) {
	r := execRun(d.t, d.miragectl, nil, append([]string{"issue", "--json", "--timeout", "20s", "--server", urls, "--nkey", d.operator}, args...)...)
	var rep bus.Report
	if r.code == 0 {
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
			d.t.Fatalf("issue --json printed %q: %v", r.stdout, err)
		}
	}
	return rep, r
}

// deploy/README.md on one node: keys, the real nats-server from single.conf with the
// fleet's auth.conf, 'miragectl up' from deploy/config/mirage.toml against it, a Ghost made
// by 'ghostctl init' and enrolled, a reload, and an intent satisfied end to end.
func TestSingleNodeWithRealBinaries(t *testing.T) {
	d := newNATSDeploy(t)
	d.bootstrap()
	conf := d.copyConf("single.conf")
	testenv.StartNATSServer(t, d.bin, conf, d.ports[8222])
	url := d.url(4222)

	up := testenv.Start(t, d.miragectl, "up", "--config", testenv.RepoPath("deploy/config/mirage.toml"),
		"--server", url, "--replicas", "1", "--data-dir", d.dataDir, "--log-format", "text", "--metrics-listen", "127.0.0.1:0")
	waitUp(t, up)
	ghostConf := d.enroll("edge-1", url)
	d.authConfig(url)
	d.reload(conf)
	ghost := testenv.Start(t, d.ghost, "run", "--config", ghostConf)
	d.waitOnline(url, "edge-1")

	rep, r := d.issueJSON(url, "--target", "edge-1", "seed.kv", "incr", "key=hits")
	if r.code != 0 || rep.Type != bus.TypeReport || rep.Phase != bus.PhaseSatisfied || len(rep.Results) != 1 || rep.Results[0].Stdout != "1" {
		t.Fatalf("issue: exit %d, report %+v", r.code, rep)
	}
	if code := ghost.Stop(30 * time.Second); code != 0 {
		t.Errorf("ghostctl run exited %d after SIGTERM", code)
	}
	if code := up.Stop(30 * time.Second); code != 0 {
		t.Errorf("miragectl up exited %d after SIGTERM", code)
	}
}

// deploy/README.md on the 3-node cluster: three real nats-servers from cluster-*.conf,
// Mirage at replicas 3 (mirage.toml), two Ghosts, and an intent that completes while one
// server is stopped, and after it is back. (A server killed with -9 works too, but Mirage
// may then hold issues for up to 30 s: see deploy/README.md, step 6.)
func TestClusterRunbookWithRealBinaries(t *testing.T) {
	d := newNATSDeploy(t)
	d.bootstrap()
	var confs []string
	var servers []*testenv.Process
	for n := 1; n <= 3; n++ {
		confs = append(confs, d.copyConf(fmt.Sprintf("cluster-%d.conf", n)))
	}
	for _, conf := range confs { // all three first: JetStream waits for its peers
		servers = append(servers, testenv.Start(t, d.bin, "-c", conf, "-P", conf+".pid"))
	}
	for i, p := range servers {
		testenv.WaitHealthy(t, p, d.ports[8222+i])
	}
	urls := strings.Join([]string{d.url(4222), d.url(4223), d.url(4224)}, ",")

	up := testenv.Start(t, d.miragectl, "up", "--config", testenv.RepoPath("deploy/config/mirage.toml"),
		"--server", urls, "--data-dir", d.dataDir, "--log-format", "text", "--metrics-listen", "127.0.0.1:0")
	waitUp(t, up)
	cfgs := []string{d.enroll("edge-1", urls), d.enroll("edge-2", urls)}
	d.authConfig(urls)
	for _, conf := range confs {
		d.reload(conf)
	}
	var ghosts []*testenv.Process
	for _, c := range cfgs {
		ghosts = append(ghosts, testenv.Start(t, d.ghost, "run", "--config", c))
	}
	d.waitOnline(urls, "edge-1", "edge-2")

	// While the server is down an issue may wait out an election: retry as an operator would.
	satisfied := func(what string) {
		var last run
		testenv.Eventually(t, 45*time.Second, "an intent to complete "+what, func() bool {
			var rep bus.Report
			rep, last = d.issueJSON(urls, "--target", "edge-1,edge-2", "seed.flow", "echo", "message="+strings.ReplaceAll(what, " ", "-"))
			if last.code != 0 {
				time.Sleep(500 * time.Millisecond)
			}
			return last.code == 0 && rep.Phase == bus.PhaseSatisfied && rep.Counts.Success == 2
		})
	}
	satisfied("on three servers")
	if r := execRun(t, d.bin, nil, "--signal", "quit="+confs[1]+".pid"); r.code != 0 {
		t.Fatalf("nats-server --signal quit: exit %d", r.code)
	}
	servers[1].Wait(30 * time.Second)
	satisfied("with one server stopped")
	servers[1] = testenv.StartNATSServer(t, d.bin, confs[1], d.ports[8223])
	satisfied("after it came back")

	// A Ghost offline when an intent is issued reads its command through Mirage when it
	// comes back (replay, the Ghosts' account under auth), here from the third server,
	// Mirage's answers crossing the cluster.
	if code := ghosts[1].Stop(30 * time.Second); code != 0 {
		t.Fatalf("ghostctl edge-2 exited %d after SIGTERM", code)
	}
	r := execRun(t, d.miragectl, nil, "issue", "--no-wait", "--timeout", "60s", "--server", urls, "--nkey", d.operator,
		"--target", "edge-2", "seed.flow", "echo", "message=caught-up")
	intentID := strings.TrimSpace(r.stdout)
	if r.code != 0 || intentID == "" {
		t.Fatalf("issue --no-wait to the stopped Ghost: exit %d %q %s", r.code, r.stdout, r.stderr)
	}
	ghosts[1] = testenv.Start(t, d.ghost, "run", "--config", cfgs[1], "--server", d.url(4224))
	r = execRun(t, d.miragectl, nil, "report", intentID, "--wait", "--json", "--server", urls, "--nkey", d.operator)
	var caught bus.Report
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &caught) != nil || caught.Phase != bus.PhaseSatisfied {
		t.Fatalf("the intent issued while edge-2 was stopped: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
	// The runbook's metrics check: the counters moved with the intents.
	m := regexp.MustCompile(`url=(http://127\.0\.0\.1:[0-9]+/metrics)`).FindStringSubmatch(up.Output())
	if m == nil {
		t.Fatalf("miragectl up did not log its metrics address:\n%s", up.Output())
	}
	resp, err := http.Get(m[1])
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`(?m)^edgectl_mirage_intents_finished_total\{phase="satisfied"\} [1-9]`).Match(body) {
		t.Fatalf("metrics do not show satisfied intents:\n%s", body)
	}
	if code := up.Stop(30 * time.Second); code != 0 {
		t.Errorf("miragectl up exited %d after SIGTERM", code)
	}
}
