package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/config"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds"
	"github.com/edgectl/edgectl/subjects"
)

// fileConfig is a Ghost's config.toml.
type fileConfig struct {
	ID                string            `koanf:"id"`
	Server            string            `koanf:"server"`
	StateDir          string            `koanf:"state_dir"`
	Policy            string            `koanf:"policy"`
	Seeds             []string          `koanf:"seeds"`
	Labels            map[string]string `koanf:"labels"`
	HeartbeatInterval time.Duration     `koanf:"heartbeat_interval"`
	MaxConcurrent     int               `koanf:"max_concurrent"`
	NKeyFile          string            `koanf:"nkey_file"`
	TrustedMirageKeys []string          `koanf:"trusted_mirage_keys"`
	CommandMaxAge     time.Duration     `koanf:"command_max_age"`
	LogFormat         string            `koanf:"log_format"`
	LogLevel          string            `koanf:"log_level"`
}

// flagKeys maps ghostctl run flags to config keys.
var flagKeys = map[string]string{
	"server":     "server",
	"log-format": "log_format",
	"log-level":  "log_level",
}

// loadConfig reads and validates a Ghost config; relative paths are taken from the file's
// directory.
func loadConfig(path string, flags *pflag.FlagSet) (*fileConfig, error) {
	cfg := &fileConfig{Policy: ghost.PolicyAuto}
	if err := config.Load(path, true, flags, flagKeys, cfg); err != nil {
		return nil, err
	}
	bad := func(key, format string, args ...any) error {
		return &config.Error{Source: path, Key: key, Reason: fmt.Sprintf(format, args...)}
	}
	if cfg.ID == "" {
		return nil, bad("id", "missing: every Ghost needs an id")
	}
	if err := subjects.ValidateGhostID(cfg.ID); err != nil {
		return nil, bad("id", "%s", strings.TrimPrefix(err.Error(), subjects.ErrInvalidID.Error()+": "))
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
	if cfg.NKeyFile != "" && !filepath.IsAbs(cfg.NKeyFile) {
		cfg.NKeyFile = filepath.Join(filepath.Dir(path), cfg.NKeyFile)
	}
	for i, k := range cfg.TrustedMirageKeys {
		if err := bus.ValidatePublicKey(k); err != nil {
			return nil, bad(fmt.Sprintf("trusted_mirage_keys[%d]", i), "%v", err)
		}
	}
	cfg.Server = bus.ServerURL(cfg.Server)
	ids, err := seeds.Parse(strings.Join(cfg.Seeds, ","))
	if len(cfg.Seeds) == 0 {
		ids, err = []string{}, nil
	}
	if err != nil {
		return nil, bad("seeds", "%v", err)
	}
	cfg.Seeds = ids
	for k, v := range cfg.Labels {
		if k == "" || strings.ContainsAny(k, "=,") || strings.ContainsAny(v, "=,") {
			return nil, bad("labels."+k, "label keys and values may not contain = or ,")
		}
	}
	if cfg.MaxConcurrent < 0 {
		return nil, bad("max_concurrent", "must not be negative")
	}
	return cfg, nil
}
