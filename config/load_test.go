package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/edgectl/edgectl/config"
)

// testConfig has the shapes a runtime config has: strings, a list, a map, a duration, a
// nested table.
type testConfig struct {
	ID                string            `koanf:"id"`
	Server            string            `koanf:"server"`
	StateDir          string            `koanf:"state_dir"`
	LogLevel          string            `koanf:"log_level"`
	Seeds             []string          `koanf:"seeds"`
	Labels            map[string]string `koanf:"labels"`
	HeartbeatInterval time.Duration     `koanf:"heartbeat_interval"`
	MaxMB             *int64            `koanf:"max_mb"` // nil: not set
	NATS              struct {
		Creds string `koanf:"creds"`
	} `koanf:"nats"`
}

var flagKeys = map[string]string{"server": "server", "log-level": "log_level", "state-dir": "state_dir", "heartbeat": "heartbeat_interval"}

// writeFile writes a config file in a fresh directory and returns its path.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// flags returns the flag set of a command, parsed from args.
func flags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.String("server", "nats://flag-default:4222", "")
	fs.String("log-level", "flag-default", "")
	fs.String("state-dir", "", "")
	fs.Bool("unmapped", false, "")
	fs.Duration("heartbeat", time.Second, "")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

const fullFile = `
id = "edge-1"
server = "nats://file:4222"
state_dir = "/var/lib/file"
log_level = "info"
seeds = ["seed.flow", "seed.kv"]
heartbeat_interval = "5s"

[labels]
zone = "eu"

[nats]
creds = "/etc/edge.creds"
`

// File, then EDGE_ environment, then flags that were set; an unset flag's default does
// not override anything.
func TestLoadPrecedence(t *testing.T) {
	path := writeFile(t, fullFile)
	t.Setenv("EDGE_SERVER", "nats://env:4222")
	t.Setenv("EDGE_STATE_DIR", "/var/lib/env")
	t.Setenv("EDGE_NOT_A_KEY", "ignored") // EDGE_ variables of other tools
	var cfg testConfig
	if err := config.Load(path, true, flags(t, "--server", "nats://flag:4222", "--unmapped"), flagKeys, &cfg); err != nil {
		t.Fatalf("Load: %v", err)
	}
	checks := []struct{ key, got, want string }{
		{"id (file only)", cfg.ID, "edge-1"},
		{"server (file, env, flag)", cfg.Server, "nats://flag:4222"},
		{"state_dir (file, env)", cfg.StateDir, "/var/lib/env"},
		{"log_level (file, unset flag with a default)", cfg.LogLevel, "info"},
		{"nats.creds (nested table)", cfg.NATS.Creds, "/etc/edge.creds"},
		{"labels.zone", cfg.Labels["zone"], "eu"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.key, c.got, c.want)
		}
	}
	if !reflect.DeepEqual(cfg.Seeds, []string{"seed.flow", "seed.kv"}) {
		t.Errorf("seeds = %q", cfg.Seeds)
	}
	if cfg.HeartbeatInterval != 5*time.Second {
		t.Errorf("heartbeat_interval = %s, want 5s", cfg.HeartbeatInterval)
	}
}

// A duration flag that was set overrides the file (its value reaches the decoder as a
// time.Duration, not as text).
func TestLoadDurationFlag(t *testing.T) {
	path := writeFile(t, fullFile)
	var cfg testConfig
	if err := config.Load(path, true, flags(t, "--heartbeat", "30s"), flagKeys, &cfg); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.HeartbeatInterval != 30*time.Second {
		t.Fatalf("heartbeat_interval = %s, want the flag's 30s", cfg.HeartbeatInterval)
	}
}

func TestLoadEnvironmentOverrides(t *testing.T) {
	path := writeFile(t, fullFile)
	t.Setenv("EDGE_LABELS__ROLE", "gateway")
	t.Setenv("EDGE_HEARTBEAT_INTERVAL", "250ms")
	t.Setenv("EDGE_SEEDS", "seed.fs,seed.system")
	t.Setenv("EDGE_NATS__CREDS", "/env.creds")
	var cfg testConfig
	if err := config.Load(path, true, nil, nil, &cfg); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if want := map[string]string{"zone": "eu", "role": "gateway"}; !reflect.DeepEqual(cfg.Labels, want) {
		t.Errorf("labels = %v, want %v (file and environment merged)", cfg.Labels, want)
	}
	if cfg.HeartbeatInterval != 250*time.Millisecond {
		t.Errorf("heartbeat_interval = %s, want 250ms", cfg.HeartbeatInterval)
	}
	if !reflect.DeepEqual(cfg.Seeds, []string{"seed.fs", "seed.system"}) {
		t.Errorf("seeds = %q, want the comma-separated environment list", cfg.Seeds)
	}
	if cfg.NATS.Creds != "/env.creds" {
		t.Errorf("nats.creds = %q", cfg.NATS.Creds)
	}
}

// Without a file (optional and missing), environment and flags still apply and defaults
// already in the struct stay.
func TestLoadOptionalMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "absent.toml")
	t.Setenv("EDGE_ID", "from-env")
	cfg := testConfig{LogLevel: "warn"}
	if err := config.Load(path, false, flags(t, "--state-dir", "/flag"), flagKeys, &cfg); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.ID != "from-env" || cfg.StateDir != "/flag" || cfg.LogLevel != "warn" || cfg.Server != "" {
		t.Fatalf("config %+v", cfg)
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.toml")
	tests := []struct {
		name     string
		path     string // a file with content is written when empty
		content  string
		required bool
		key      string // Error.Key wanted
		mention  []string
	}{
		{name: "unknown key", content: "id = \"a\"\nbogus = 1\n", key: "bogus", mention: []string{"bogus", "unknown"}},
		{name: "unknown nested key", content: "[nats]\nurl = \"x\"\n", key: "nats.url", mention: []string{"nats.url"}},
		{name: "misspelled key", content: "stat_dir = \"/x\"\n", key: "stat_dir", mention: []string{"stat_dir", "state_dir"}},
		{name: "invalid TOML", content: "id = \n", mention: []string{"TOML"}},
		{name: "not TOML at all", content: "{\"id\": \"json\"}\n", mention: []string{"TOML"}},
		{name: "missing required file", path: missing, required: true, mention: []string{"cannot read"}},
		{name: "bad duration", content: "heartbeat_interval = \"soon\"\n", key: "heartbeat_interval", mention: []string{"duration with a unit", "\"soon\""}},
		{name: "duration without a unit", content: "heartbeat_interval = 5\n", key: "heartbeat_interval", mention: []string{"duration with a unit", "integer 5"}},
		{name: "list for a label", content: "[labels]\nrole = [\"a\"]\n", key: "labels.role", mention: []string{"expected text", "a list"}},
		// TOML is typed: a number where text goes is a mistake, not converted silently.
		{name: "number for a string", content: "state_dir = 5\n", key: "state_dir", mention: []string{"expected a string", "integer 5"}},
		{name: "number in a list", content: "seeds = [\"seed.flow\", 2]\n", key: "seeds", mention: []string{"list of strings"}},
		// A pointer key (unset is nil) is checked as what it points to.
		{name: "fraction for an optional integer", content: "max_mb = 4096.7\n", key: "max_mb", mention: []string{"expected an integer"}},
		{name: "text for an optional integer", content: "max_mb = \"64\"\n", key: "max_mb", mention: []string{"expected an integer"}},
		{name: "table for a string", content: "[server]\nurl = \"x\"\n", key: "server.url", mention: []string{"unknown key"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = writeFile(t, tc.content)
			}
			var cfg testConfig
			err := config.Load(path, tc.required, nil, nil, &cfg)
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Load error %v (%T), want *config.Error", err, err)
			}
			if ce.Source != path || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q (source %q) does not name the file %s", err, ce.Source, path)
			}
			if ce.Key != tc.key {
				t.Fatalf("error key %q, want %q (%s)", ce.Key, tc.key, err)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Fatalf("error %q does not mention %q", err, m)
				}
			}
		})
	}
}

// A wrong value from the environment is reported; the error says what is wrong.
func TestLoadBadEnvironmentValue(t *testing.T) {
	path := writeFile(t, "id = \"a\"\n")
	t.Setenv("EDGE_HEARTBEAT_INTERVAL", "soon")
	var cfg testConfig
	err := config.Load(path, true, nil, nil, &cfg)
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Key != "EDGE_HEARTBEAT_INTERVAL" || !strings.Contains(err.Error(), "heartbeat_interval") || !strings.Contains(err.Error(), "soon") {
		t.Fatalf("Load error %v, want a *config.Error naming EDGE_HEARTBEAT_INTERVAL, heartbeat_interval and the value", err)
	}
}

// A label's value may be written as a number or true/false, taken as its text (rack = 3
// is "3", gpu = true is "true", not the "1" weak decoding would make), and an environment
// variable set empty counts as unset, as before values were type-checked.
func TestLoadLabelNumbersAndEmptyEnvironment(t *testing.T) {
	path := writeFile(t, "id = \"a\"\nheartbeat_interval = \"5s\"\n[labels]\nrack = 3\ngpu = true\nspare = false\nweight = 1.5\n")
	t.Setenv("EDGE_HEARTBEAT_INTERVAL", "")
	var cfg testConfig
	if err := config.Load(path, true, nil, nil, &cfg); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"rack": "3", "gpu": "true", "spare": "false", "weight": "1.5"}
	if !reflect.DeepEqual(cfg.Labels, want) || cfg.HeartbeatInterval != 5*time.Second {
		t.Fatalf("labels %v, heartbeat %s; want %v and the file's 5s", cfg.Labels, cfg.HeartbeatInterval, want)
	}
}

// A pointer key is nil when nothing sets it, and takes a value from the file or the
// environment; a bad environment value for it is refused.
func TestLoadOptionalKey(t *testing.T) {
	var cfg testConfig
	if err := config.Load(writeFile(t, "id = \"a\"\n"), true, nil, nil, &cfg); err != nil || cfg.MaxMB != nil {
		t.Fatalf("unset: %v, %v; want nil", err, cfg.MaxMB)
	}
	if err := config.Load(writeFile(t, "max_mb = 0\n"), true, nil, nil, &cfg); err != nil || cfg.MaxMB == nil || *cfg.MaxMB != 0 {
		t.Fatalf("max_mb = 0: %v, %v; want a pointer to 0", err, cfg.MaxMB)
	}
	t.Setenv("EDGE_MAX_MB", "64")
	cfg = testConfig{}
	if err := config.Load("", false, nil, nil, &cfg); err != nil || cfg.MaxMB == nil || *cfg.MaxMB != 64 {
		t.Fatalf("EDGE_MAX_MB=64: %v, %v; want a pointer to 64", err, cfg.MaxMB)
	}
	t.Setenv("EDGE_MAX_MB", "lots")
	var ce *config.Error
	if err := config.Load("", false, nil, nil, &testConfig{}); !errors.As(err, &ce) || ce.Key != "EDGE_MAX_MB" {
		t.Fatalf("EDGE_MAX_MB=lots: %v; want a *config.Error on EDGE_MAX_MB", err)
	}
}
