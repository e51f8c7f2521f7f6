package natsd

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/edgectl/edgectl/bus"
)

// Sync settings of the embedded server's JetStream store.
const (
	// SyncAlways fsyncs every write before it is acknowledged (the default: an
	// acknowledged command or event survives a power loss).
	SyncAlways = "always"
	// SyncInterval fsyncs on a timer (SyncEvery); faster, but an OS crash can lose the
	// writes of the last interval.
	SyncInterval = "interval"
)

// DefaultListen is where the embedded server listens unless told otherwise.
const DefaultListen = "127.0.0.1:4222"

// Config configures the embedded nats-server.
type Config struct {
	// Listen is HOST:PORT; port 0 or -1 picks a free port. Empty means DefaultListen.
	Listen string
	// DontListen serves in-process connections only (tests, benchmarks).
	DontListen bool
	// StoreDir holds the JetStream store.
	StoreDir string
	// Sync is SyncAlways (default) or SyncInterval.
	Sync string
	// SyncEvery is the fsync interval with SyncInterval (default 2 minutes, the server's).
	SyncEvery time.Duration
	// ServerName names the server (clusters need distinct names).
	ServerName string
	// Logger receives the server's log lines; nil discards them.
	Logger *slog.Logger
	// Users, when not nil, turns on nkey authentication: only these users connect, each
	// with its permissions. SetUsers changes them while the server runs. When users name
	// an account (Users and CertUsers do), the server runs with the fleet's accounts
	// (accounts.go), and its JetStream store is that of account EDGE.
	Users []*server.NkeyUser
	// TLS, when not nil, requires TLS of every socket client (in-process connections need
	// none); with TLS.VerifyClients, a client certificate signed by TLS.CA too.
	TLS *bus.TLSFiles
	// CertUsers are the users a verified client certificate maps to (CertUsers); they need
	// TLS.VerifyClients. SetAuth changes them while the server runs.
	CertUsers []*server.User
	// Customize, when set, may adjust the options before the server starts (TLS, cluster).
	Customize func(*server.Options) error
}

// Server is a running embedded nats-server.
type Server struct {
	*server.Server
	mu   sync.Mutex
	opts *server.Options
}

// SetUsers replaces the authorized nkey users without a restart: a user no longer listed
// is disconnected and refused from then on.
func (s *Server) SetUsers(users []*server.NkeyUser) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setAuth(users, s.opts.Users)
}

// SetAuth replaces both the nkey users and the certificate-mapped users (see CertUsers)
// without a restart; a user no longer listed is disconnected and refused from then on.
func (s *Server) SetAuth(nkeys []*server.NkeyUser, certUsers []*server.User) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(certUsers) > 0 && !s.opts.TLSMap {
		return errCertUsersNeedMap
	}
	return s.setAuth(nkeys, certUsers)
}

var errCertUsersNeedMap = errors.New("certificate-mapped users need TLS with client verification")

func (s *Server) setAuth(nkeys []*server.NkeyUser, certUsers []*server.User) error {
	if (nkeys != nil || certUsers != nil) && usesAccounts(nkeys, certUsers) != (s.opts.Accounts != nil) {
		return errAccountsFixed
	}
	// A reload re-configures the accounts, which leaves JetStream's API without
	// responders for a millisecond or two (clients then get "no responders"): the same
	// users again (a Ghost enrolled again with its key, each 'up --auth' start) reload
	// nothing.
	if authOf(nkeys, certUsers) == authOf(s.opts.Nkeys, s.opts.Users) {
		return nil
	}
	next := s.opts.Clone()
	next.Nkeys = nkeys
	next.Users = certUsers
	if err := s.ReloadOptions(next); err != nil {
		return fmt.Errorf("reload authorization: %w", err)
	}
	s.opts = next
	return nil
}

// authOf is a canonical form of a set of users: who, in which account, allowed what.
func authOf(nkeys []*server.NkeyUser, certUsers []*server.User) string {
	type user struct {
		Name, Account string
		Permissions   *server.Permissions
		Cert          bool
	}
	all := make([]user, 0, len(nkeys)+len(certUsers))
	account := func(a *server.Account) string {
		if a == nil {
			return ""
		}
		return a.GetName()
	}
	for _, u := range nkeys {
		all = append(all, user{Name: u.Nkey, Account: account(u.Account), Permissions: u.Permissions})
	}
	for _, u := range certUsers {
		all = append(all, user{Name: u.Username, Account: account(u.Account), Permissions: u.Permissions, Cert: true})
	}
	slices.SortFunc(all, func(a, b user) int {
		if a.Cert != b.Cert {
			if a.Cert {
				return 1
			}
			return -1
		}
		return strings.Compare(a.Name, b.Name)
	})
	data, err := json.Marshal(struct {
		Nil   bool
		Users []user
	}{nkeys == nil && certUsers == nil, all})
	if err != nil {
		return fmt.Sprintf("unencodable %p", &all) // never equal: reload
	}
	return string(data)
}

// AuthRequired reports whether clients must authenticate.
func (s *Server) AuthRequired() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.Nkeys != nil || s.opts.Users != nil
}

// TLSRequired reports whether socket clients must use TLS.
func (s *Server) TLSRequired() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.TLSConfig != nil
}

// Start starts an embedded nats-server with JetStream and waits until it accepts
// connections.
func Start(cfg Config) (*Server, error) {
	opts := &server.Options{
		ServerName: cfg.ServerName,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		MaxPayload: bus.MaxEnvelope + 64<<10, // headers ride on top of the largest envelope
	}
	if cfg.StoreDir == "" {
		return nil, errors.New("embedded server: a store directory is required")
	}
	opts.StoreDir = filepath.Clean(cfg.StoreDir)
	switch cfg.Sync {
	case "", SyncAlways:
		opts.SyncAlways = true
	case SyncInterval:
		if cfg.SyncEvery < 0 {
			return nil, fmt.Errorf("embedded server: sync interval %s is negative", cfg.SyncEvery)
		}
		opts.SyncInterval = cfg.SyncEvery
	default:
		return nil, fmt.Errorf("embedded server: sync %q is not %q or %q", cfg.Sync, SyncAlways, SyncInterval)
	}
	if cfg.DontListen {
		opts.DontListen = true
	} else {
		listen := cfg.Listen
		if listen == "" {
			listen = DefaultListen
		}
		host, portStr, err := net.SplitHostPort(listen)
		if err != nil {
			return nil, fmt.Errorf("embedded server: listen address %q: %w", listen, err)
		}
		port, err := strconv.Atoi(portStr)
		if err != nil {
			return nil, fmt.Errorf("embedded server: listen port %q is not a number", portStr)
		}
		if port == 0 {
			port = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, port
	}
	if cfg.Users != nil {
		opts.Nkeys = cfg.Users
	}
	if cfg.TLS != nil {
		if err := ApplyTLS(opts, *cfg.TLS); err != nil {
			return nil, fmt.Errorf("embedded server: %w", err)
		}
	}
	if cfg.CertUsers != nil {
		if !opts.TLSMap {
			return nil, fmt.Errorf("embedded server: %w", errCertUsersNeedMap)
		}
		opts.Users = cfg.CertUsers
	}
	from, to := AccountEdge, globalAccount
	if usesAccounts(opts.Nkeys, opts.Users) {
		accounts, err := fleetAccounts()
		if err != nil {
			return nil, err
		}
		opts.Accounts = accounts
		from, to = to, from
	}
	if cfg.Customize != nil {
		if err := cfg.Customize(opts); err != nil {
			return nil, err
		}
	}
	if err := moveJetStreamAccount(opts, from, to); err != nil {
		return nil, fmt.Errorf("embedded server: %w", err)
	}
	if !opts.DontListen && opts.Nkeys == nil && opts.Users == nil && !isLoopback(opts.Host) {
		return nil, fmt.Errorf("embedded server: listening on %s without authentication would let anyone who reaches it command the fleet; listen on loopback or enable auth", opts.Host)
	}
	if err := probeListen(opts); err != nil {
		return nil, err
	}
	ns, err := server.NewServer(opts.Clone())
	if err != nil {
		return nil, fmt.Errorf("embedded server: %w", err)
	}
	if cfg.Logger != nil {
		ns.SetLoggerV2(serverLog{cfg.Logger.With("component", "nats-server")}, false, false, false)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded server did not become ready in 30s (is %s already in use?)", listenOf(opts))
	}
	return &Server{Server: ns, opts: opts}, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// probeListen tries the client and cluster addresses before the server starts: the
// server only logs a failed listen and never becomes ready, which would cost a 30 s wait
// for an address already in use. Port 0 (any free port) needs no probe.
func probeListen(o *server.Options) error {
	addrs := map[string]string{}
	if !o.DontListen && o.Port > 0 {
		addrs["client"] = net.JoinHostPort(o.Host, strconv.Itoa(o.Port))
	}
	if o.Cluster.Port > 0 {
		addrs["cluster"] = net.JoinHostPort(o.Cluster.Host, strconv.Itoa(o.Cluster.Port))
	}
	for kind, addr := range addrs {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("embedded server: cannot listen for %s connections on %s: %w", kind, addr, errors.Unwrap(err))
		}
		_ = l.Close()
	}
	return nil
}

func listenOf(o *server.Options) string {
	if o.DontListen {
		return "in-process"
	}
	return net.JoinHostPort(o.Host, strconv.Itoa(o.Port))
}

// serverLog adapts nats-server's logger to slog.
type serverLog struct{ l *slog.Logger }

// Notices (banner, settings) are debug detail for edgectl's operators; warnings and
// errors are kept.
func (s serverLog) Noticef(format string, v ...any) { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s serverLog) Warnf(format string, v ...any)   { s.l.Warn(fmt.Sprintf(format, v...)) }
func (s serverLog) Fatalf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s serverLog) Errorf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s serverLog) Debugf(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s serverLog) Tracef(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
