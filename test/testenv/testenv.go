// Package testenv is the one place tests start real parts: an embedded nats-server with
// JetStream in a temp dir, in-process connections, Mirage, and Ghosts hosting the built-in
// seeds. Everything it starts is stopped by t.Cleanup, in reverse order.
package testenv

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/subjects"
)

// Env is a running embedded server and what tests started on it.
type Env struct {
	T      testing.TB
	Server *natsd.Server
	Dir    string
	Log    *slog.Logger
	// URL is the server's client URL on loopback, with the Listen option.
	URL  string
	opts options
}

// Option adjusts an Env.
type Option func(*options)

type options struct {
	listen       bool
	sync         string
	dir          string
	port         int
	users        []*server.NkeyUser
	tls          *bus.TLSFiles  // tls.go
	certs        []*server.User // tls.go
	noJS         bool
	store        int64 // JetStream max store, bytes; 0: the server's default
	routeProxies bool  // NewCluster: every route through a proxy (cluster.go)
}

// Users turns on nkey authentication with these users.
func Users(u []*server.NkeyUser) Option { return func(o *options) { o.users = u } }

// Listen makes the server listen on a random loopback port (for real processes).
func Listen() Option { return func(o *options) { o.listen = true } }

// Sync sets the JetStream sync setting.
func Sync(s string) Option { return func(o *options) { o.sync = s } }

// NoJetStream starts a server without JetStream, as plain nats-server runs.
func NoJetStream() Option { return func(o *options) { o.noJS = true } }

// MaxStore limits the server's JetStream file store to n bytes.
func MaxStore(n int64) Option { return func(o *options) { o.store = n } }

// StoreDir reuses a store directory (to restart a server on the same store).
func StoreDir(dir string) Option { return func(o *options) { o.dir = dir } }

// New starts an embedded server with JetStream.
func New(t testing.TB, opts ...Option) *Env {
	t.Helper()
	var o options
	for _, f := range opts {
		f(&o)
	}
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	e := &Env{T: t, Dir: o.dir, Log: Logger(t), opts: o}
	e.start()
	t.Cleanup(e.StopServer)
	return e
}

func (e *Env) start() {
	e.T.Helper()
	o := e.opts
	cfg := natsd.Config{StoreDir: filepath.Join(o.dir, "js"), Sync: o.sync, Logger: e.Log, DontListen: !o.listen, Users: o.users, TLS: o.tls, CertUsers: o.certs}
	if o.listen {
		cfg.Listen = fmt.Sprintf("127.0.0.1:%d", o.port)
	}
	if o.noJS || o.store > 0 {
		cfg.Customize = func(so *server.Options) error {
			so.JetStream = !o.noJS
			if o.store > 0 {
				so.JetStreamMaxStore = o.store
			}
			return nil
		}
	}
	ns, err := natsd.Start(cfg)
	if err != nil {
		e.T.Fatalf("start server: %v", err)
	}
	e.Server = ns
	if o.listen {
		e.URL = ns.ClientURL()
		e.opts.port = ns.Addr().(*net.TCPAddr).Port
	}
}

// RestartServer stops the server and starts it again on the same port and store, as an
// operator restarting nats-server would. Socket clients reconnect; in-process ones cannot.
func (e *Env) RestartServer(down time.Duration) {
	e.T.Helper()
	e.StopServer()
	time.Sleep(down)
	e.start()
}

// ConnWith opens an in-process connection with extra options (an identity, an inbox
// prefix); it fails the test when the server refuses it.
func (e *Env) ConnWith(name string, opts ...nats.Option) *nats.Conn {
	e.T.Helper()
	nc, err := bus.Connect(context.Background(), bus.ConnConfig{InProcess: e.Server, Name: name, Persistent: true, Logger: e.Log, Options: opts})
	if err != nil {
		e.T.Fatalf("connect %s: %v", name, err)
	}
	e.T.Cleanup(nc.Close)
	return nc
}

// URLConn opens a socket connection (to the server or through url) that reconnects like a
// daemon's; it survives RestartServer.
func (e *Env) URLConn(name, url string, opts ...nats.Option) *nats.Conn {
	e.T.Helper()
	if url == "" {
		url = e.URL
	}
	nc, err := bus.Connect(context.Background(), bus.ConnConfig{URL: url, Name: name, Persistent: true, Logger: e.Log, Options: opts})
	if err != nil {
		e.T.Fatalf("connect: %v", err)
	}
	e.T.Cleanup(nc.Close)
	return nc
}

// StopServer shuts the server down and waits (idempotent).
func (e *Env) StopServer() {
	if e.Server.Running() {
		e.Server.Shutdown()
	}
	e.Server.WaitForShutdown()
}

// Logger returns a logger that writes to the test log when EDGE_TEST_LOG is set, and
// discards otherwise.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("EDGE_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// Conn opens an in-process connection that reconnects like a daemon's.
func (e *Env) Conn(name string) *nats.Conn {
	e.T.Helper()
	nc, err := bus.Connect(context.Background(), bus.ConnConfig{InProcess: e.Server, Name: name, Persistent: true, Logger: e.Log})
	if err != nil {
		e.T.Fatalf("connect: %v", err)
	}
	e.T.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a fresh connection.
func (e *Env) JetStream() jetstream.JetStream {
	e.T.Helper()
	js, err := jetstream.New(e.Conn("test-js"))
	if err != nil {
		e.T.Fatal(err)
	}
	return js
}

// StartMirage starts a Mirage on its own connection.
func (e *Env) StartMirage(cfg mirage.Config) *mirage.Mirage {
	e.T.Helper()
	return e.StartMirageOn(e.Conn("mirage"), cfg)
}

// StartMirageOn starts a Mirage on the given connection.
func (e *Env) StartMirageOn(nc *nats.Conn, cfg mirage.Config) *mirage.Mirage {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := mirage.New(ctx, nc, cfg, e.Log)
	if err != nil {
		e.T.Fatalf("mirage: %v", err)
	}
	if err := m.Start(ctx); err != nil {
		e.T.Fatalf("mirage start: %v", err)
	}
	e.T.Cleanup(func() { _ = m.Close() })
	return m
}

// GhostOption adjusts a test Ghost.
type GhostOption func(*ghostSpec)

type ghostSpec struct {
	nc    *nats.Conn
	cfg   ghost.Config
	seeds []string
	store ghost.ExecutionStore
	reg   *ghost.Registry
	log   *slog.Logger
}

// Labels sets a Ghost's labels.
func Labels(l map[string]string) GhostOption { return func(s *ghostSpec) { s.cfg.Labels = l } }

// Policy sets a Ghost's Mirage policy.
func Policy(p string) GhostOption { return func(s *ghostSpec) { s.cfg.Policy = p } }

// Seeds sets the built-in seeds a Ghost hosts.
func Seeds(ids ...string) GhostOption { return func(s *ghostSpec) { s.seeds = ids } }

// Store sets a Ghost's execution store.
func Store(st ghost.ExecutionStore) GhostOption { return func(s *ghostSpec) { s.store = st } }

// WithRegistry sets a Ghost's seed registry (instead of built-in seeds).
func WithRegistry(r *ghost.Registry) GhostOption { return func(s *ghostSpec) { s.reg = r } }

// Via runs the Ghost on the given connection (a socket one, through a proxy say).
func Via(nc *nats.Conn) GhostOption { return func(s *ghostSpec) { s.nc = nc } }

// GhostLog sets the Ghost's logger (to watch for a line it logs); the env's by default.
func GhostLog(l *slog.Logger) GhostOption { return func(s *ghostSpec) { s.log = l } }

// Tune adjusts the Ghost's config.
func Tune(f func(*ghost.Config)) GhostOption { return func(s *ghostSpec) { f(&s.cfg) } }

// StartGhost starts a Ghost hosting every built-in seed unless told otherwise.
func (e *Env) StartGhost(id string, opts ...GhostOption) *ghost.Ghost {
	e.T.Helper()
	spec := ghostSpec{cfg: ghost.Config{ID: id, Policy: ghost.PolicyAuto, ShutdownGrace: 5 * time.Second}, seeds: seeds.All}
	for _, f := range opts {
		f(&spec)
	}
	reg := spec.reg
	if reg == nil {
		var err error
		reg, err = seeds.Registry(spec.seeds, filepath.Join(e.Dir, "ghosts", id))
		if err != nil {
			e.T.Fatalf("seeds: %v", err)
		}
	}
	store := spec.store
	if store == nil {
		store = ghost.NewMemoryStore()
	}
	nc := spec.nc
	if nc == nil {
		nc = e.ConnWith("ghost "+id, bus.GhostRequests()) // as ghostctl connects
	}
	log := spec.log
	if log == nil {
		log = e.Log
	}
	g, err := ghost.New(nc, spec.cfg, reg, store, log)
	if err != nil {
		e.T.Fatalf("ghost %s: %v", id, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.Start(ctx); err != nil {
		e.T.Fatalf("ghost %s start: %v", id, err)
	}
	e.T.Cleanup(func() { _ = g.Close() })
	return g
}

// Client returns a Mirage client on a fresh connection.
func (e *Env) Client() *mirage.Client {
	e.T.Helper()
	c, err := mirage.NewClient(e.Conn("client"))
	if err != nil {
		e.T.Fatal(err)
	}
	return c
}

// NewIssue builds a valid issue.
func NewIssue(scope, seed, op string, args map[string]string, timeout time.Duration) *bus.Issue {
	if args == nil {
		args = map[string]string{}
	}
	return &bus.Issue{
		Header:      bus.NewHeader(bus.TypeIssue, "", time.Now()),
		IntentID:    subjects.NewID(subjects.PrefixIntent),
		Actor:       "test",
		TargetScope: scope,
		Objective:   bus.Objective{SeedSelector: seed, Operation: op, Args: args},
		TimeoutMS:   timeout.Milliseconds(),
	}
}

// Run issues an intent and waits for its terminal report.
func (e *Env) Run(c *mirage.Client, is *bus.Issue) *bus.Report {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(is.TimeoutMS)*time.Millisecond+30*time.Second)
	defer cancel()
	if _, err := c.Issue(ctx, is); err != nil {
		e.T.Fatalf("issue: %v", err)
	}
	r, err := c.WaitTerminal(ctx, is.IntentID)
	if err != nil {
		e.T.Fatalf("wait for the report of %s: %v", is.IntentID, err)
	}
	return r
}

// Eventually polls cond until it holds or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

// Events returns every event stored in EDGE_EVT.
func (e *Env) Events(js jetstream.JetStream) []bus.Event {
	e.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{})
	if err != nil {
		e.T.Fatal(err)
	}
	// Deleted once read: tests poll this, and the server would otherwise keep one
	// consumer per call until their inactivity threshold, up to its consumer limit.
	defer func() {
		if info := cons.CachedInfo(); info != nil {
			_ = js.DeleteConsumer(context.Background(), bus.StreamEvents, info.Name)
		}
	}()
	info, err := cons.Info(ctx)
	if err != nil {
		e.T.Fatal(err)
	}
	var out []bus.Event
	for remaining := info.NumPending; remaining > 0; {
		batch, err := cons.Fetch(int(min(remaining, 1000)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			e.T.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var ev bus.Event
			if err := bus.Decode(m.Data(), &ev); err != nil {
				e.T.Fatalf("stored event does not decode: %v", err)
			}
			if m.Headers().Get(bus.HeaderMsgID) != ev.EventID {
				e.T.Fatalf("stored event %s has Nats-Msg-Id %q", ev.EventID, m.Headers().Get(bus.HeaderMsgID))
			}
			out = append(out, ev)
		}
		if n == 0 {
			// On a cluster the consumer's first pull can be lost (its server did not know
			// the consumer yet), or its replica still catching up: ask again, as storedIDs
			// does, rather than return every later event as missing.
			if ctx.Err() != nil {
				e.T.Logf("read %d of %d events of %s within 10 s", len(out), info.NumPending, bus.StreamEvents)
				break
			}
			continue
		}
		remaining -= uint64(n)
	}
	return out
}
