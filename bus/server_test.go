package bus_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
)

// startServer starts an embedded server on a fresh store and shuts it down, waiting, when the
// test ends.
func startServer(t *testing.T, cfg bus.ServerConfig) *bus.Server {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	ns, err := bus.StartServer(cfg)
	if err != nil {
		t.Fatalf("StartServer: %v", err)
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

func connect(t *testing.T, cfg bus.ConnConfig) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, cfg)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func TestEnsureAssets(t *testing.T) {
	ns := startServer(t, bus.ServerConfig{DontListen: true})
	nc := connect(t, bus.ConnConfig{InProcess: ns, Name: "test"})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatalf("EnsureAssets: %v", err)
	}
	before := streamConfigs(ctx, t, js)
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{Replicas: 1}); err != nil {
		t.Fatalf("EnsureAssets a second time: %v", err)
	}
	after := streamConfigs(ctx, t, js)

	tests := []struct {
		stream, subject string
		maxAge          time.Duration
	}{
		{bus.StreamCommands, "cmd.*", bus.CommandRetention},
		{bus.StreamEvents, "evt.*", bus.EventRetention},
		{bus.StreamReports, "report.*", bus.ReportRetention},
	}
	for _, tt := range tests {
		cfg, ok := after[tt.stream]
		if !ok {
			t.Errorf("stream %s missing", tt.stream)
			continue
		}
		if len(cfg.Subjects) != 1 || cfg.Subjects[0] != tt.subject {
			t.Errorf("stream %s subjects = %v, want [%s]", tt.stream, cfg.Subjects, tt.subject)
		}
		if cfg.Storage != jetstream.FileStorage || cfg.Replicas != 1 || cfg.Duplicates != bus.DuplicateWindow ||
			cfg.MaxAge != tt.maxAge || cfg.MaxMsgSize != bus.MaxEnvelope {
			t.Errorf("stream %s config = %+v", tt.stream, cfg)
		}
		if b := before[tt.stream]; b.Description != cfg.Description || b.MaxAge != cfg.MaxAge || b.MaxMsgsPerSubject != cfg.MaxMsgsPerSubject {
			t.Errorf("stream %s changed on the second EnsureAssets", tt.stream)
		}
	}
	if _, ok := after["OBJ_"+bus.BucketSeeds]; !ok || len(after) != 4 {
		t.Errorf("streams = %v, want exactly the three EDGE_ streams and the object store %s", after, bus.BucketSeeds)
	}

	for _, bucket := range []string{bus.BucketGhosts, bus.BucketIntents} {
		kv, err := js.KeyValue(ctx, bucket)
		if err != nil {
			t.Errorf("KV bucket %s: %v", bucket, err)
			continue
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.History() != 1 {
			t.Errorf("bucket %s history = %d, want 1", bucket, st.History())
		}
		if _, err := kv.Put(ctx, "edge-1", []byte(`{"ghost_id":"edge-1"}`)); err != nil {
			t.Errorf("put into %s: %v", bucket, err)
		}
		if e, err := kv.Get(ctx, "edge-1"); err != nil || string(e.Value()) != `{"ghost_id":"edge-1"}` {
			t.Errorf("get from %s: %v", bucket, err)
		}
	}
}

// streamConfigs returns the config of every stream but those backing KV buckets.
func streamConfigs(ctx context.Context, t *testing.T, js jetstream.JetStream) map[string]jetstream.StreamConfig {
	t.Helper()
	out := map[string]jetstream.StreamConfig{}
	lister := js.ListStreams(ctx)
	for info := range lister.Info() {
		if !strings.HasPrefix(info.Config.Name, "KV_") {
			out[info.Config.Name] = info.Config
		}
	}
	if err := lister.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCommandDeduplication(t *testing.T) {
	ns := startServer(t, bus.ServerConfig{DontListen: true})
	nc := connect(t, bus.ConnConfig{InProcess: ns})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	cmd := readGolden(t, "command.json")
	publish := func(id string) *jetstream.PubAck {
		t.Helper()
		msg := nats.NewMsg("cmd.x")
		msg.Header.Set(jetstream.MsgIDHeader, id)
		msg.Data = cmd
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		return ack
	}
	first := publish("cmd_M2mLZ9lsPZ78NnjLnXoOTw")
	second := publish("cmd_M2mLZ9lsPZ78NnjLnXoOTw")
	if first.Duplicate || !second.Duplicate || first.Sequence != second.Sequence || first.Stream != bus.StreamCommands {
		t.Errorf("acks = %+v, %+v; want the second a duplicate of the first in %s", first, second, bus.StreamCommands)
	}
	if msgs := streamMsgs(ctx, t, js, bus.StreamCommands); msgs != 1 {
		t.Errorf("%s holds %d messages, want 1", bus.StreamCommands, msgs)
	}
	publish("cmd_S7kQ2vNn0cW5YhJ3aXrGq2")
	if msgs := streamMsgs(ctx, t, js, bus.StreamCommands); msgs != 2 {
		t.Errorf("%s holds %d messages after a second command, want 2", bus.StreamCommands, msgs)
	}

	// Events and reports land in their own streams.
	for subject, stream := range map[string]string{"evt.edge-1": bus.StreamEvents, "report.int_1": bus.StreamReports} {
		ack, err := js.Publish(ctx, subject, []byte("{}"))
		if err != nil || ack.Stream != stream {
			t.Errorf("publish to %s: %+v, %v; want stored in %s", subject, ack, err, stream)
		}
	}
}

func streamMsgs(ctx context.Context, t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestStartServerRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  bus.ServerConfig
		want string
	}{
		{"bogus sync", bus.ServerConfig{DontListen: true, StoreDir: t.TempDir(), Sync: "bogus"}, "bogus"},
		{"no store", bus.ServerConfig{DontListen: true}, "store"},
		{"listen without port", bus.ServerConfig{StoreDir: t.TempDir(), Listen: "127.0.0.1"}, "127.0.0.1"},
		{"listen port not a number", bus.ServerConfig{StoreDir: t.TempDir(), Listen: "127.0.0.1:nats"}, "nats"},
		{"customize fails", bus.ServerConfig{DontListen: true, StoreDir: t.TempDir(),
			Customize: func(*server.Options) error { return errors.New("no TLS key") }}, "no TLS key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns, err := bus.StartServer(tt.cfg)
			if err == nil {
				ns.Shutdown()
				ns.WaitForShutdown()
				t.Fatal("StartServer succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

// logCounter counts the records a slog.Logger receives.
type logCounter struct {
	mu sync.Mutex
	n  int
}

func (c *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *logCounter) Handle(context.Context, slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return nil
}
func (c *logCounter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *logCounter) WithGroup(string) slog.Handler      { return c }

func TestStartServerListen(t *testing.T) {
	logs := &logCounter{}
	ns := startServer(t, bus.ServerConfig{
		Listen: "127.0.0.1:0", Sync: bus.SyncInterval, SyncEvery: time.Second,
		ServerName: "edge-test", Logger: slog.New(logs),
	})
	url := ns.ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") || strings.HasSuffix(url, ":0") || strings.HasSuffix(url, ":-1") {
		t.Fatalf("ClientURL() = %q, want a random port on 127.0.0.1", url)
	}
	nc := connect(t, bus.ConnConfig{URL: url, Name: "test"})
	if _, err := nc.RTT(); err != nil {
		t.Fatalf("RTT: %v", err)
	}
	if got := nc.ConnectedServerName(); got != "edge-test" {
		t.Errorf("server name = %q, want edge-test", got)
	}
	logs.mu.Lock()
	n := logs.n
	logs.mu.Unlock()
	if n == 0 {
		t.Error("the server logged nothing to the given logger")
	}
}

func TestConnectUnavailable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := bus.Connect(ctx, bus.ConnConfig{URL: "nats://edge:s3cret@" + addr})
	if err == nil {
		nc.Close()
		t.Fatal("Connect to a closed port succeeded")
	}
	if !errors.Is(err, bus.ErrUnavailable) {
		t.Errorf("error %v does not wrap ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %q leaks the password", err)
	}
}

func TestServerURL(t *testing.T) {
	t.Setenv("NATS_URL", "")
	if got := bus.ServerURL(""); got != bus.DefaultURL {
		t.Errorf("ServerURL() = %q, want %q", got, bus.DefaultURL)
	}
	t.Setenv("NATS_URL", "nats://env:4222")
	if got := bus.ServerURL(""); got != "nats://env:4222" {
		t.Errorf("ServerURL() = %q, want $NATS_URL", got)
	}
	if got := bus.ServerURL("nats://flag:4222"); got != "nats://flag:4222" {
		t.Errorf("ServerURL(flag) = %q, want the flag", got)
	}
}
