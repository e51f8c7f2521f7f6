package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/config"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds"
	"github.com/edgectl/edgectl/ghost/seeds/control"
)

func newRun() *cobra.Command {
	var cfgPath string
	c := &cobra.Command{
		Use:   "run [--config FILE] [--server URL] [--metrics-listen HOST:PORT] [--log-format text|json] [--log-level LEVEL]",
		Short: "Run the Ghost: serve cmd.<id> until SIGINT or SIGTERM",
		Long: `run connects to NATS and serves the Ghost described by its config file: commands
arrive on cmd.<id>, events leave on evt.<id>. Besides the seeds of its config it hosts
the control seed "ghost" and the seeds installed with 'miragectl seed push' (kept under
STATE/seeds), and installs the config's boot_seeds first. It refuses to start (exit 3)
when another live Ghost has its id. With policy auto or required it registers
with Mirage and sends a heartbeat every 5 s. SIGINT or SIGTERM stops intake, lets running
executions finish (10 s grace), flushes their events, and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cfgPath, cmd.Flags())
			if err != nil {
				return err
			}
			log, err := cli.Logger(os.Stderr, cfg.LogFormat, cfg.LogLevel)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
				return fmt.Errorf("state directory: %w", err)
			}
			reg, err := seeds.Registry(cfg.Seeds, cfg.StateDir)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			conn := bus.ConnConfig{URL: cfg.Server, Name: "ghost " + cfg.ID, Persistent: true, Logger: log,
				TLS: bus.TLSFiles{CA: cfg.TLSCA, Cert: cfg.TLSCert, Key: cfg.TLSKey}}
			var identity *bus.Identity
			if cfg.NKeyFile != "" {
				if identity, err = bus.LoadIdentity(cfg.NKeyFile); err != nil {
					return &config.Error{Source: config.Where(cfgPath, "nkey_file"), Key: "nkey_file", Reason: err.Error()}
				}
			}
			conn.Options = append(connAuth(cfg, identity), bus.GhostRequests())
			nc, err := bus.Connect(ctx, conn)
			if err != nil {
				return cli.Exit(cli.ExitUnavailable, err)
			}
			defer nc.Close()
			store, err := ghost.OpenBoltStore(filepath.Join(cfg.StateDir, "executions.db"), ghost.BoltOptions{})
			if err != nil {
				return err
			}
			defer store.Close()
			gcfg := ghost.Config{
				ID: cfg.ID, Version: version, Labels: cfg.Labels, Policy: cfg.Policy,
				HeartbeatInterval: cfg.HeartbeatInterval, MaxConcurrent: cfg.MaxConcurrent,
				Identity: identity, TrustedMirageKeys: cfg.TrustedMirageKeys, CommandMaxAge: cfg.CommandMaxAge,
			}
			if cfg.MetricsListen != "" {
				gcfg.Metrics = ghost.NewMetrics()
				stop, err := cli.ServeMetrics(cfg.MetricsListen, metricsHandler(gcfg.Metrics), log)
				if err != nil {
					return err
				}
				defer stop()
			}
			g, err := ghost.New(nc, gcfg, reg, store, log)
			if err != nil {
				return err
			}
			// The control seed "ghost" is always hosted; it loads the seeds installed
			// before, then installs the boot seeds, so the first registration lists them.
			ctl, err := control.New(g, control.Config{Conn: nc, StateDir: cfg.StateDir, Allow: cfg.SeedAllowlist, Version: version, Log: log})
			if err != nil {
				return err
			}
			defer ctl.Close() // once the Ghost is closed (below): it ends the waits for replaced seeds to drain
			if err := ctl.Boot(ctx, cfg.BootSeeds); err != nil {
				log.Error("boot seeds not installed; serving without them", "component", "ghostctl", "err", err)
			}
			if err := g.Start(ctx); err != nil {
				_ = g.Close()
				if cli.Interrupted(ctx) && g.Err() == nil && !errors.Is(err, ghost.ErrDuplicateID) {
					// SIGINT or SIGTERM while it probed its id or registered: a stop
					// asked for, not a failure. It has run nothing.
					log.Info("stopped while starting", "component", "ghostctl")
					return nil
				}
				return cli.Exit(cli.ExitUnavailable, err)
			}
			settleMemory()
			if (cfg.Auth || cfg.TLSCert != "") && len(cfg.TrustedMirageKeys) == 0 {
				log.Warn("commands are run without checking Mirage's signature: trusted_mirage_keys is empty; add Mirage's public key (see docs/security.md)", "component", "ghostctl", "ghost_id", cfg.ID)
			}
			server := nc.ConnectedUrlRedacted()
			if server == "" { // not connected yet: the URLs it keeps trying
				server = bus.Redact(cfg.Server)
			}
			log.Info("ghost running; SIGINT or SIGTERM stops it", "component", "ghostctl", "ghost_id", cfg.ID, "server", server, "connected", nc.IsConnected(), "production", cfg.Production, "tls", conn.TLS.Enabled(), "cert_identity", cfg.TLSCert != "")
			select {
			case <-ctx.Done():
			case <-g.Done():
				// Another instance of this id keeps it (found after a reconnect): the
				// Ghost closed itself rather than run every command twice.
				return cli.Exit(cli.ExitUnavailable, g.Err())
			}
			log.Info("stopping: draining executions and flushing events", "component", "ghostctl")
			if err := g.Close(); err != nil {
				return err
			}
			if err := nc.Drain(); err != nil {
				log.Debug("drain", "err", err)
			}
			return nil
		},
	}
	serve := c.RunE
	c.RunE = func(cmd *cobra.Command, args []string) error { return cli.Daemon(serve(cmd, args)) }
	c.Flags().StringVar(&cfgPath, "config", "config.toml", "the Ghost's config file (written by ghostctl init)")
	c.Flags().String("server", "", "NATS server URL; overrides the config's server")
	c.Flags().String("log-format", "text", "log format: text or json")
	c.Flags().String("log-level", "info", "log level: debug, info, warn or error")
	c.Flags().String("metrics-listen", "", "serve Prometheus metrics on HOST:PORT/metrics (off by default)")
	return c
}

// connAuth is how the Ghost authenticates its connection. With a client certificate
// (tls_cert) the certificate is its identity (mTLS, CN=<id>,OU=ghost,O=edgectl) and the
// nkey only signs events; otherwise the nkey authenticates it. Either way its replies
// arrive on its own inbox prefix, the one its permissions allow.
func connAuth(cfg *fileConfig, identity *bus.Identity) []nats.Option {
	// Without auth = true the server has no authentication (a nats-server without auth
	// refuses nkey logins), so the key only signs events.
	if !cfg.Auth && cfg.TLSCert == "" {
		return nil
	}
	opts := []nats.Option{nats.CustomInboxPrefix(bus.GhostInbox(cfg.ID))}
	if identity != nil && cfg.Auth && cfg.TLSCert == "" {
		opts = append(opts, identity.NATSOption())
	}
	return opts
}
