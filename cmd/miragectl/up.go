package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
	"github.com/edgectl/edgectl/config"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds"
	"github.com/edgectl/edgectl/ghost/seeds/control"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/natsd"
)

// upConfig is the configuration of 'miragectl up' (TOML file, EDGE_ env, flags).
type upConfig struct {
	NATSListen    string        `koanf:"nats_listen"`
	Server        string        `koanf:"server"`
	DataDir       string        `koanf:"data_dir"`
	NoLocalGhost  bool          `koanf:"no_local_ghost"`
	Auth          bool          `koanf:"auth"`
	Sync          string        `koanf:"sync"`
	SyncInterval  time.Duration `koanf:"sync_interval"`
	Replicas      int           `koanf:"replicas"`
	EventsMaxMB   *int64        `koanf:"events_max_mb"` // nil: not set, the default cap
	MetricsListen string        `koanf:"metrics_listen"`
	LogFormat     string        `koanf:"log_format"`
	LogLevel      string        `koanf:"log_level"`
	// TLS and production mode (uptls.go). The keys are nats_tls_*, not tls_*, so that the
	// client variables $EDGE_TLS_CA/CERT/KEY of the same shell never replace the server's.
	Production       bool   `koanf:"production"`
	TLSCert          string `koanf:"nats_tls_cert"`
	TLSKey           string `koanf:"nats_tls_key"`
	TLSCA            string `koanf:"nats_tls_ca"`
	TLSVerifyClients bool   `koanf:"nats_tls_verify_clients"`
}

var upFlagKeys = map[string]string{
	"nats-listen":        "nats_listen",
	"server":             "server",
	"data-dir":           "data_dir",
	"no-local-ghost":     "no_local_ghost",
	"auth":               "auth",
	"sync":               "sync",
	"sync-interval":      "sync_interval",
	"replicas":           "replicas",
	"events-max-mb":      "events_max_mb",
	"log-format":         "log_format",
	"metrics-listen":     "metrics_listen",
	"log-level":          "log_level",
	"production":         "production",
	"tls-cert":           "nats_tls_cert",
	"tls-key":            "nats_tls_key",
	"tls-ca":             "nats_tls_ca",
	"tls-verify-clients": "nats_tls_verify_clients",
}

// The cap of EDGE_EVT in MiB (bus.AssetConfig.EventsMaxBytes).
var (
	defaultEventsMaxMB = bus.DefaultEventsMaxBytes >> 20
	minEventsMaxMB     = bus.MinEventsMaxBytes >> 20
)

// eventsMaxBytes turns events_max_mb into bus.AssetConfig.EventsMaxBytes: not set is the
// default cap, which is lowered to leave at least half a small JetStream store to the rest
// (bus.eventsStream); 0 is no cap; a cap set by the operator is kept as it is (refused if the
// store cannot reserve it, or it leaves no room for the rest).
func eventsMaxBytes(mb *int64) int64 {
	switch {
	case mb == nil:
		return 0
	case *mb == 0:
		return -1
	}
	return *mb << 20
}

// LocalGhostID is the id of the Ghost that 'up' runs beside Mirage.
const LocalGhostID = "local"

func newUp() *cobra.Command {
	var cfgPath string
	c := &cobra.Command{
		Use:   "up [--config FILE] [--nats-listen HOST:PORT | --server URL] [--data-dir DIR] [--no-local-ghost] [--auth] [--production] [--tls-cert FILE --tls-key FILE [--tls-ca FILE] [--tls-verify-clients]] [--sync always|interval] [--sync-interval DURATION] [--replicas N] [--events-max-mb N] [--metrics-listen HOST:PORT] [--log-format text|json] [--log-level LEVEL]",
		Short: "Run an embedded NATS server with JetStream, Mirage, and a local Ghost",
		Long: `up runs everything edgectl needs on one machine: an embedded nats-server with JetStream
(listening on 127.0.0.1:4222, data under ./.edgectl/), Mirage, and a co-located Ghost
"local" hosting every built-in seed. It logs the client URL it serves; point the other
commands (and the nats CLI) at it. SIGINT or SIGTERM drains, flushes and exits 0.

One Mirage per deployment: up against a NATS server (or cluster) where another Mirage
serves exits 3 at once, naming that one's host and pid. A Mirage that was stopped or cut
off from NATS while another started stands down when it comes back (exit 3); the other
takes up its open intents. See docs/operations.md.

Exit codes: 0 stopped by SIGINT or SIGTERM; 2 invalid flag or config; 3 it could not
start (server, port, data directory, credentials, another Mirage) or stood down.

The JetStream store fsyncs every write by default (--sync always): an acknowledged command
or event survives a power loss. --sync interval fsyncs every --sync-interval instead:
faster, but an OS crash can lose the last interval's writes.
` + upTLSHelp,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := upConfig{NATSListen: natsd.DefaultListen, DataDir: ".edgectl", Sync: natsd.SyncAlways, SyncInterval: 2 * time.Minute, Replicas: 1}
			if err := config.Load(cfgPath, cfgPath != "", cmd.Flags(), upFlagKeys, &cfg); err != nil {
				return err
			}
			if cfg.Server != "" {
				if err := bus.CheckServerURL(cfg.Server); err != nil {
					return cli.Invalid("server (--server, EDGE_SERVER): %v", err)
				}
				for _, name := range []string{"nats-listen", "sync", "sync-interval"} {
					if cmd.Flags().Changed(name) {
						return cli.Invalid("--%s does not apply when up connects to a server (server %s is set): it configures the embedded NATS server, which is then not started", name, cfg.Server)
					}
				}
			}
			if cfg.Server == "" {
				if err := checkListen(cfg.NATSListen, !cfg.Auth); err != nil {
					return err
				}
			}
			if err := checkUpTLS(cfg); err != nil {
				return err
			}
			if cfg.Sync != natsd.SyncAlways && cfg.Sync != natsd.SyncInterval {
				return cli.Invalid("sync (--sync, EDGE_SYNC) %q: use always or interval", cfg.Sync)
			}
			if cfg.Sync == natsd.SyncInterval && cfg.SyncInterval <= 0 {
				return cli.Invalid("sync_interval (--sync-interval, EDGE_SYNC_INTERVAL) %s: use a positive duration such as 30s or 2m", cfg.SyncInterval)
			}
			if cfg.Sync != natsd.SyncInterval && cmd.Flags().Changed("sync-interval") {
				return cli.Invalid("--sync-interval applies with --sync interval only (sync is %s: every write is fsynced)", cfg.Sync)
			}
			if cfg.Replicas < 1 || cfg.Replicas > bus.MaxReplicas {
				return cli.Invalid("replicas (--replicas, EDGE_REPLICAS) %d: use 1 to %d (1 on the embedded server, 3 on a 3-node cluster)", cfg.Replicas, bus.MaxReplicas)
			}
			if mb := cfg.EventsMaxMB; mb != nil && *mb != 0 && *mb < minEventsMaxMB {
				return cli.Invalid("events_max_mb (--events-max-mb, EDGE_EVENTS_MAX_MB) %d: use at least %d, or 0 for no cap", *mb, minEventsMaxMB)
			}
			log, err := cli.Logger(os.Stderr, cfg.LogFormat, cfg.LogLevel)
			if err != nil {
				return err
			}
			err = up(cmd, cfg, log)
			if err != nil && cli.Interrupted(cmd.Context()) {
				// SIGINT or SIGTERM while it started (provisioning, a server being
				// tried): a stop asked for, not a failure.
				log.Info("stopped while starting", "component", "miragectl", "err", err)
				return nil
			}
			return cli.Daemon(err)
		},
	}
	f := c.Flags()
	f.StringVar(&cfgPath, "config", "", "a TOML config file (keys: nats_listen, server, data_dir, no_local_ghost, auth, sync, sync_interval, replicas, events_max_mb, metrics_listen, log_format, log_level, production, nats_tls_cert, nats_tls_key, nats_tls_ca, nats_tls_verify_clients)")
	f.String("server", "", "run against this NATS server (or cluster) instead of an embedded one")
	f.String("nats-listen", natsd.DefaultListen, "where the embedded NATS server listens (HOST:PORT; loopback only without auth)")
	f.String("data-dir", ".edgectl", "directory for the JetStream store and the local Ghost's state")
	f.Bool("no-local-ghost", false, "do not run the co-located Ghost \"local\"")
	f.Bool("auth", false, "nkey authentication only: Ghosts must be enrolled (miragectl fleet add), commands and events are signed; keys under DATA_DIR/keys")
	f.String("sync", natsd.SyncAlways, "JetStream fsync: always (every write) or interval")
	f.Duration("sync-interval", 2*time.Minute, "fsync interval with --sync interval")
	f.Int("replicas", 1, "copies of each stream, KV bucket and object store: 1 on the embedded server, 3 on a 3-node cluster")
	f.Int64("events-max-mb", defaultEventsMaxMB, "cap of the event stream EDGE_EVT in MiB, the one stream Ghosts write: past it the oldest events go, so a flooding Ghost cannot fill the store; the default is lower on a JetStream store under 8 GiB, to leave at least half of it to the rest; 0 for no cap")
	f.String("log-format", "text", "log format: text or json")
	f.String("log-level", "info", "log level: debug, info, warn or error")
	f.String("metrics-listen", "", "serve Prometheus metrics of Mirage and the local Ghost on HOST:PORT/metrics (off by default)")
	registerUpTLSFlags(f)
	return c
}

// checkListen refuses a listen address that is not HOST:PORT, and, when loopbackOnly
// (no authentication: anyone who reaches the port could command the fleet), one that is
// not a loopback address.
func checkListen(listen string, loopbackOnly bool) error {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return cli.Invalid("nats_listen (--nats-listen, EDGE_NATS_LISTEN) %q: expected HOST:PORT", listen)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return cli.Invalid("nats_listen (--nats-listen, EDGE_NATS_LISTEN) %q: the port is not a number from 0 to 65535", listen)
	}
	if !loopbackOnly {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return cli.Invalid("nats_listen (--nats-listen) %q is not a loopback address; serving other hosts requires authentication, so it needs --auth", listen)
	}
	return nil
}

func up(cmd *cobra.Command, cfg upConfig, log *slog.Logger) error {
	ctx := cmd.Context()
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return cli.Invalid("data_dir (--data-dir): %v", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	unlock, err := cli.LockDir(dataDir, "miragectl.lock", "miragectl up")
	if errors.Is(err, cli.ErrNoLocking) {
		log.Warn("the data directory cannot be locked: make sure no other miragectl up uses it", "component", "miragectl", "err", err)
	} else if err != nil {
		return fmt.Errorf("data directory %w", err)
	}
	defer unlock()
	served := false // up served: say when all of it has stopped (the deferred server too)
	defer func() {
		if served {
			log.Info("stopped", "component", "miragectl")
		}
	}()
	// The metrics address is taken first, so that one in use is refused at once, as the
	// server's is; what it serves is read at each scrape.
	var metrics *prometheus.Registry
	var ghostMetrics *ghost.Metrics // the local Ghost's, served with Mirage's
	if cfg.MetricsListen != "" {
		metrics = metricsRegistry()
		if !cfg.NoLocalGhost {
			ghostMetrics = ghost.NewMetrics()
		}
		stopMetrics, err := cli.ServeMetrics(cfg.MetricsListen, metricsHandler(metrics, ghostMetrics), log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	var auth *upAuth
	if cfg.Auth {
		if auth, err = loadUpAuth(dataDir); err != nil {
			return err
		}
	}
	var ns *natsd.Server
	conn := bus.ConnConfig{Name: "mirage", Persistent: true, Logger: log}
	if cfg.Server != "" {
		conn.URL = cfg.Server
		conn.TLS = cfg.tlsFiles()
	} else {
		scfg := natsd.Config{
			Listen: cfg.NATSListen, StoreDir: dataDir,
			Sync: cfg.Sync, SyncEvery: cfg.SyncInterval, ServerName: "edgectl", Logger: log,
		}
		if auth != nil {
			scfg.Users = auth.users(nil, !cfg.NoLocalGhost)
		}
		if files := cfg.tlsFiles(); files.Enabled() {
			scfg.TLS = &files
		}
		ns, err = natsd.Start(scfg)
		if err != nil {
			return cli.Exit(cli.ExitUnavailable, err)
		}
		defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
		conn.InProcess = ns
	}
	mconn := conn
	mcfg := mirage.Config{Replicas: cfg.Replicas, EventsMaxBytes: eventsMaxBytes(cfg.EventsMaxMB)}
	if metrics != nil {
		mcfg.Metrics = mirage.NewMetrics(metrics)
	}
	if auth != nil {
		mconn.Options = []nats.Option{auth.mirage.NATSOption(), nats.CustomInboxPrefix(bus.MirageInbox())}
		mcfg.Identity = auth.mirage
		mcfg.RequireSignedEvents = true
		mcfg.OperatorKey = auth.operator.PublicKey()
		if !cfg.NoLocalGhost {
			mcfg.EnrollAtStart = map[string]string{LocalGhostID: auth.local.PublicKey()}
		}
		if ns != nil {
			mcfg.OnFleetChange = fleetChange(ns, auth, cfg)
		}
	}
	if ns == nil {
		keyFile := ""
		if auth != nil {
			keyFile = auth.mirageFile()
		}
		if err := probeServer(ctx, mconn, keyFile); err != nil {
			return err
		}
	}
	mnc, err := bus.Connect(ctx, mconn)
	if err != nil {
		return cli.Exit(cli.ExitUnavailable, err)
	}
	defer mnc.Close()
	m, err := mirage.New(ctx, mnc, mcfg, log)
	if err != nil {
		return cli.Exit(cli.ExitUnavailable, err)
	}
	if err := m.Start(ctx); err != nil {
		_ = m.Close()
		return cli.Exit(cli.ExitUnavailable, err)
	}
	if metrics != nil {
		m.Observe(metrics)
	}

	var local *localGhost
	if !cfg.NoLocalGhost {
		gconn := conn
		gconn.Name = "ghost " + LocalGhostID
		gcfg := ghost.Config{ID: LocalGhostID, Version: version, Labels: map[string]string{"role": "local"}, Policy: ghost.PolicyAuto, Metrics: ghostMetrics}
		if auth != nil {
			gconn.Options = []nats.Option{auth.local.NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox(LocalGhostID))}
			gcfg.Identity = auth.local
			gcfg.TrustedMirageKeys = []string{auth.mirage.PublicKey()}
		}
		local, err = runLocalGhost(ctx, func(ctx context.Context) (*ghost.Ghost, func() error, error) {
			return startLocalGhost(ctx, gconn, gcfg, dataDir, log)
		}, log)
		if err != nil {
			_ = m.Close()
			return err
		}
	}
	url := cfg.Server
	if ns != nil {
		url = ns.ClientURL()
	}
	attrs := []any{"component", "miragectl", "url", url, "embedded_server", ns != nil, "data_dir", dataDir}
	if ns != nil {
		attrs = append(attrs, "sync", cfg.Sync)
	}
	attrs = append(attrs, "local_ghost", !cfg.NoLocalGhost, "production", cfg.Production, "tls", cfg.tlsFiles().Enabled(), "mtls", cfg.TLSVerifyClients)
	log.Info("edgectl up", attrs...)
	key := ""
	if auth != nil {
		key = " --nkey " + auth.operatorFile()
	}
	if cfg.NoLocalGhost {
		fmt.Fprintf(os.Stderr, "edgectl is up: NATS at %s; Ghosts that register appear in: miragectl ghosts%s%s\n", url, serverFlagFor(url), key)
	} else {
		fmt.Fprintf(os.Stderr, "edgectl is up: NATS at %s; try: miragectl issue%s%s --target %s seed.flow status\n", url, serverFlagFor(url), key, LocalGhostID)
	}
	if auth != nil {
		auth.explain(os.Stderr, url)
	}
	explainTLS(os.Stderr, cfg)
	served = true
	select {
	case <-ctx.Done():
	case <-m.Done():
		// Another Mirage started on this deployment while this one was not answering
		// (mirage/singleton.go): this one stood down and stopped.
		log.Error("stopping: Mirage stood down for another one", "component", "miragectl", "err", m.Err())
	}
	log.Info("stopping: draining the local Ghost, Mirage and the server", "component", "miragectl")
	var errs []error
	if local != nil {
		errs = append(errs, local.Close())
	}
	errs = append(errs, m.Close())
	_ = mnc.Drain()
	if err := m.Err(); err != nil {
		return cli.Exit(cli.ExitUnavailable, err)
	}
	return errors.Join(errs...)
}

// serverFlagFor is the --server flag a client needs to reach url: none when url is where
// clients look without one (--server, then $NATS_URL, then the default).
func serverFlagFor(url string) string {
	if url == bus.ServerURL("") {
		return ""
	}
	return " --server " + url
}

// startLocalGhost runs the co-located Ghost "local" with every built-in seed, on an
// in-process connection. Its stop function closes the Ghost and its connection.
func startLocalGhost(ctx context.Context, conn bus.ConnConfig, gcfg ghost.Config, dataDir string, log *slog.Logger) (*ghost.Ghost, func() error, error) {
	state := filepath.Join(dataDir, "ghosts", LocalGhostID)
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, nil, fmt.Errorf("local ghost state: %w", err)
	}
	reg, err := seeds.Registry(seeds.All, state)
	if err != nil {
		return nil, nil, err
	}
	conn.Options = append(conn.Options, bus.GhostRequests())
	nc, err := bus.Connect(ctx, conn)
	if err != nil {
		return nil, nil, cli.Exit(cli.ExitUnavailable, err)
	}
	store, err := ghost.OpenBoltStore(filepath.Join(state, "executions.db"), ghost.BoltOptions{})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	g, err := ghost.New(nc, gcfg, reg, store, log)
	var ctl *control.Seed
	if err == nil { // the control seed "ghost": seed push may install to "local" too
		ctl, err = control.New(g, control.Config{Conn: nc, StateDir: state, Allow: []string{"*"}, Version: gcfg.Version, Log: log})
	}
	if err != nil {
		nc.Close()
		_ = store.Close()
		return nil, nil, err
	}
	if err := g.Start(ctx); err != nil {
		_ = g.Close()
		ctl.Close()
		nc.Close()
		_ = store.Close()
		return nil, nil, err
	}
	return g, func() error {
		err := g.Close()
		ctl.Close() // after the executions: it waits for replaced seeds to drain
		_ = nc.Drain()
		_ = store.Close()
		return err
	}, nil
}
