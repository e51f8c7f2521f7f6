package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/config"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds"
	"github.com/edgectl/edgectl/ghost/seeds/control"
	"github.com/edgectl/edgectl/subjects"
)

// fileConfig is a Ghost's config.toml.
type fileConfig struct {
	ID                string            `koanf:"id"`
	Server            string            `koanf:"server"`
	StateDir          string            `koanf:"state_dir"`
	Policy            string            `koanf:"policy"`
	Seeds             []string          `koanf:"seeds"`
	SeedAllowlist     []string          `koanf:"seed_allowlist"`
	BootSeeds         []string          `koanf:"boot_seeds"`
	Labels            map[string]string `koanf:"labels"`
	HeartbeatInterval time.Duration     `koanf:"heartbeat_interval"`
	MaxConcurrent     int               `koanf:"max_concurrent"`
	NKeyFile          string            `koanf:"nkey_file"`
	Auth              bool              `koanf:"auth"`
	TrustedMirageKeys []string          `koanf:"trusted_mirage_keys"`
	CommandMaxAge     time.Duration     `koanf:"command_max_age"`
	Production        bool              `koanf:"production"`
	TLSCA             string            `koanf:"tls_ca"`
	TLSCert           string            `koanf:"tls_cert"`
	TLSKey            string            `koanf:"tls_key"`
	MetricsListen     string            `koanf:"metrics_listen"`
	LogFormat         string            `koanf:"log_format"`
	LogLevel          string            `koanf:"log_level"`
}

// flagKeys maps ghostctl run flags to config keys.
var flagKeys = map[string]string{
	"server":         "server",
	"log-format":     "log_format",
	"log-level":      "log_level",
	"metrics-listen": "metrics_listen",
}

// loadConfig reads and validates a Ghost config; relative paths are taken from the file's
// directory.
func loadConfig(path string, flags *pflag.FlagSet) (*fileConfig, error) {
	cfg := &fileConfig{Policy: ghost.PolicyAuto}
	if err := config.Load(path, true, flags, flagKeys, cfg); err != nil {
		return nil, err
	}
	bad := func(key, format string, args ...any) error {
		source := config.Where(path, key)
		for flag, k := range flagKeys {
			if k == key && flags != nil && flags.Changed(flag) {
				source = "flag --" + flag
			}
		}
		return &config.Error{Source: source, Key: key, Reason: fmt.Sprintf(format, args...)}
	}
	if cfg.ID == "" {
		return nil, bad("id", "missing: every Ghost needs an id")
	}
	if err := subjects.ValidateGhostID(cfg.ID); err != nil {
		return nil, bad("id", "%s", subjects.Reason(err))
	}
	switch cfg.Policy {
	case ghost.PolicyHeadless, ghost.PolicyAuto, ghost.PolicyRequired:
	default:
		return nil, bad("policy", "%q is not headless, auto or required", cfg.Policy)
	}
	if cfg.StateDir == "" {
		return nil, bad("state_dir", "missing: the Ghost keeps its executions and files there")
	}
	if !filepath.IsAbs(cfg.StateDir) {
		cfg.StateDir = filepath.Join(filepath.Dir(path), cfg.StateDir)
	}
	for _, p := range []*string{&cfg.NKeyFile, &cfg.TLSCA, &cfg.TLSCert, &cfg.TLSKey} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(filepath.Dir(path), *p)
		}
	}
	for i, k := range cfg.TrustedMirageKeys {
		if err := bus.ValidatePublicKey(k); err != nil {
			return nil, bad(fmt.Sprintf("trusted_mirage_keys[%d]", i), "%v", err)
		}
	}
	cfg.Server = bus.ServerURL(cfg.Server)
	if err := bus.CheckServerURL(cfg.Server); err != nil {
		return nil, bad("server", "%v", err)
	}
	if cfg.Auth && cfg.NKeyFile == "" {
		return nil, bad("nkey_file", "missing: auth = true needs the Ghost's key")
	}
	if err := checkTLS(cfg, bad); err != nil {
		return nil, err
	}
	if cfg.Production {
		// Production means a Ghost that runs only what an enrolled Mirage signed, and
		// that the server knows by a key or a certificate of its own.
		if !cfg.Auth && cfg.TLSCert == "" {
			return nil, bad("auth", "missing: production mode needs the Ghost's identity: auth = true with nkey_file, or tls_cert")
		}
		if len(cfg.TrustedMirageKeys) == 0 {
			return nil, bad("trusted_mirage_keys", "missing: production mode runs only commands signed by a trusted Mirage: add its public key (ghostctl init --trust, or 'miragectl up --auth' prints it)")
		}
	}
	ids, err := seeds.Parse(strings.Join(cfg.Seeds, ","))
	if len(cfg.Seeds) == 0 {
		ids, err = []string{}, nil
	}
	if err != nil {
		return nil, bad("seeds", "%v", err)
	}
	cfg.Seeds = ids
	for i, a := range cfg.SeedAllowlist {
		if err := control.ValidateAllow([]string{a}); err != nil {
			return nil, bad(fmt.Sprintf("seed_allowlist[%d]", i), "%q is not a seed id or glob (e.g. \"node.system\", \"node.*\", \"*\")", a)
		}
	}
	for i, ref := range cfg.BootSeeds {
		if _, _, err := control.ParseRef(ref); err != nil {
			return nil, bad(fmt.Sprintf("boot_seeds[%d]", i), "%q: %s (use ID or ID@VERSION)", ref, subjects.Reason(err))
		}
	}
	for k, v := range cfg.Labels {
		if k == "" || strings.ContainsAny(k, "=,") || strings.ContainsAny(v, "=,") {
			return nil, bad("labels."+k, "label keys and values may not contain = or ,")
		}
	}
	if cfg.MaxConcurrent < 0 {
		return nil, bad("max_concurrent", "must not be negative")
	}
	// Mirage shows a Ghost stale after 15 s without a heartbeat, offline after 60 s.
	if cfg.HeartbeatInterval < 0 || cfg.HeartbeatInterval > maxHeartbeatInterval {
		return nil, bad("heartbeat_interval", "%s: must be between 0 (the default, 5s) and %s, well inside the 15s after which Mirage shows a Ghost stale", cfg.HeartbeatInterval, maxHeartbeatInterval)
	}
	if cfg.CommandMaxAge < 0 {
		return nil, bad("command_max_age", "%s: must not be negative (0: the default, 25h)", cfg.CommandMaxAge)
	}
	switch cfg.LogFormat {
	case "", "text", "json":
	default:
		return nil, bad("log_format", "%q: use text or json", cfg.LogFormat)
	}
	var lv slog.Level
	if cfg.LogLevel != "" && lv.UnmarshalText([]byte(cfg.LogLevel)) != nil {
		return nil, bad("log_level", "%q: use debug, info, warn or error", cfg.LogLevel)
	}
	if cfg.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(cfg.MetricsListen); err != nil || port == "" {
			return nil, bad("metrics_listen", "%q is not HOST:PORT", cfg.MetricsListen)
		}
	}
	return cfg, nil
}

// maxHeartbeatInterval keeps heartbeats well inside Mirage's 15 s stale threshold.
const maxHeartbeatInterval = 10 * time.Second

// checkTLS validates the TLS keys. In production mode every server URL must be tls:// and
// tls_ca must say which CA signs the server's certificate. With tls_cert the certificate
// is the Ghost's connection identity, so its subject must name this Ghost.
func checkTLS(cfg *fileConfig, bad func(key, format string, args ...any) error) error {
	if cfg.Production {
		if plain := bus.PlaintextURLs(cfg.Server); len(plain) > 0 {
			return bad("server", "production mode refuses plaintext %s: use tls://HOST:PORT", strings.Join(plain, ", "))
		}
		if cfg.TLSCA == "" {
			return bad("tls_ca", "missing: production mode needs the CA file that signs the server's certificate")
		}
	}
	files := bus.TLSFiles{CA: cfg.TLSCA, Cert: cfg.TLSCert, Key: cfg.TLSKey}
	err := files.CheckClient()
	if err == nil && cfg.TLSCert != "" {
		err = bus.CheckGhostCert(cfg.TLSCert, cfg.ID)
	}
	var fe *bus.TLSFileError
	if errors.As(err, &fe) {
		return bad("tls_"+fe.Field, "%v", err)
	}
	return err
}
