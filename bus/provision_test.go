package bus_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
	"github.com/edgectl/edgectl/natsd/natsdtest"
	"github.com/edgectl/edgectl/subjects"
)

var (
	startServer = natsdtest.Start
	connect     = natsdtest.Connect
)

func TestEnsureAssets(t *testing.T) {
	ns := startServer(t, natsd.Config{DontListen: true})
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
		wantCap := int64(-1) // only EDGE_EVT, which Ghosts write, is capped in bytes
		if tt.stream == bus.StreamEvents {
			wantCap = bus.DefaultEventsMaxBytes
		}
		if cfg.MaxBytes != wantCap {
			t.Errorf("stream %s max_bytes = %d, want %d", tt.stream, cfg.MaxBytes, wantCap)
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
	ns := startServer(t, natsd.Config{DontListen: true})
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

// A replica count the server cannot keep is refused with ErrReplicas and a message that
// names the count and what the server offers, before any asset is created. (On a cluster
// too few servers are covered by test/cluster_test.go.)
func TestEnsureAssetsRefusesReplicasTheServerCannotKeep(t *testing.T) {
	ns := startServer(t, natsd.Config{DontListen: true})
	js, err := jetstream.New(connect(t, bus.ConnConfig{InProcess: ns, Name: "test"}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tests := []struct {
		replicas int
		want     []string
	}{
		{3, []string{"replicas: 3 asked for stream EDGE_CMD", "not clustered and keeps 1 copy", "set replicas to 1"}},
		{6, []string{"replicas: 6 asked", "at most 5 copies"}},
	}
	for _, tt := range tests {
		err := bus.EnsureAssets(ctx, js, bus.AssetConfig{Replicas: tt.replicas})
		if !errors.Is(err, bus.ErrReplicas) {
			t.Fatalf("replicas %d: %v, want ErrReplicas", tt.replicas, err)
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("replicas %d: %q does not say %q", tt.replicas, err, w)
			}
		}
		if n := countStreams(t, js); n != 0 {
			t.Errorf("replicas %d: %d streams created, want none", tt.replicas, n)
		}
	}
	// Asking for 1 (or leaving it 0) still works, and repeating it changes nothing.
	for _, r := range []int{0, 1, 1} {
		if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{Replicas: r}); err != nil {
			t.Fatalf("replicas %d: %v", r, err)
		}
	}
	if n := countStreams(t, js); n != 7 {
		t.Fatalf("%d streams, want 7 (3 streams, 3 KV buckets, 1 object store)", n)
	}
}

func countStreams(t *testing.T, js jetstream.JetStream) int {
	t.Helper()
	names := js.StreamNames(context.Background())
	n := 0
	for range names.Name() {
		n++
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// eventsCap is the byte cap of EDGE_EVT.
func eventsCap(ctx context.Context, t *testing.T, js jetstream.JetStream) int64 {
	t.Helper()
	s, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().Config.MaxBytes
}

func TestEventsCapSettings(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A large store, whatever the disk has free: the default is the full 4 GiB on it.
	js := jsWithStore(t, 64<<30)
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{EventsMaxBytes: bus.MinEventsMaxBytes - 1}); !errors.Is(err, bus.ErrEventsMaxBytes) {
		t.Fatalf("a cap below the minimum: %v, want ErrEventsMaxBytes", err)
	}
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{EventsMaxBytes: -1}); err != nil {
		t.Fatal(err)
	}
	if c := eventsCap(ctx, t, js); c != -1 {
		t.Errorf("no cap asked: max_bytes = %d, want -1", c)
	}
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{EventsMaxBytes: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if c := eventsCap(ctx, t, js); c != 64<<20 {
		t.Errorf("a running stream's cap was not changed: max_bytes = %d, want %d", c, 64<<20)
	}

	// A store smaller than the default cap: the default shrinks to what it can reserve, a
	// cap the operator chose is refused with a line that says what to change.
	small := startServer(t, natsd.Config{DontListen: true, Customize: func(o *server.Options) error {
		o.JetStreamMaxStore = 1 << 30
		return nil
	}})
	sjs, err := jetstream.New(connect(t, bus.ConnConfig{InProcess: small}))
	if err != nil {
		t.Fatal(err)
	}
	err = bus.EnsureAssets(ctx, sjs, bus.AssetConfig{EventsMaxBytes: 2 << 30})
	if !errors.Is(err, bus.ErrEventsMaxBytes) || !strings.Contains(err.Error(), "events_max_mb") {
		t.Fatalf("a cap the store cannot reserve: %v", err)
	}
	if err := bus.EnsureAssets(ctx, sjs, bus.AssetConfig{}); err != nil {
		t.Fatalf("the default cap on a 1 GiB store: %v", err)
	}
	if c := eventsCap(ctx, t, sjs); c > 1<<29 || c < bus.MinEventsMaxBytes { // at most half the store
		t.Errorf("the default cap on a 1 GiB store: max_bytes = %d", c)
	}

	// A stream that exists keeps its cap under the default when the store cannot reserve
	// the default: it is not shrunk (its oldest events would go).
	const had = 300 << 20
	if err := bus.EnsureAssets(ctx, sjs, bus.AssetConfig{EventsMaxBytes: had}); err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureAssets(ctx, sjs, bus.AssetConfig{}); err != nil {
		t.Fatalf("the default cap on a 1 GiB store, over a stream that exists: %v", err)
	}
	if c := eventsCap(ctx, t, sjs); c != had {
		t.Errorf("the default over a stream of %d bytes on a 1 GiB store: max_bytes = %d, want it kept", had, c)
	}
	// Where the store can reserve it, the default applies to a stream that exists.
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
		t.Fatal(err)
	}
	if c := eventsCap(ctx, t, js); c != bus.DefaultEventsMaxBytes {
		t.Errorf("the default over a stream that exists, on a large store: max_bytes = %d, want %d", c, bus.DefaultEventsMaxBytes)
	}
}

// jsWithStore starts a server whose JetStream file store is n bytes (a reservation only:
// no disk is used) and returns a JetStream context on it.
func jsWithStore(t *testing.T, n int64) jetstream.JetStream {
	t.Helper()
	ns := startServer(t, natsd.Config{DontListen: true, Customize: func(o *server.Options) error {
		o.JetStreamMaxStore = n
		return nil
	}})
	js, err := jetstream.New(connect(t, bus.ConnConfig{InProcess: ns}))
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// The default cap of EDGE_EVT, made on a store of 8 GiB or less, leaves at least half the
// store to the rest: on a store of exactly 4 GiB (which could reserve the full 4 GiB for
// EDGE_EVT, and then nothing for the streams after it) and on 6 GiB it is 2 GiB, and every
// asset is made and writable. Provisioning again changes nothing.
func TestDefaultEventsCapLeavesHalfTheStore(t *testing.T) {
	for _, tt := range []struct{ store, want int64 }{
		{4 << 30, 2 << 30},
		{6 << 30, 2 << 30},
		{8 << 30, bus.DefaultEventsMaxBytes},
		{1 << 30, 512 << 20},
	} {
		t.Run(strconv.FormatInt(tt.store>>20, 10)+"MiB", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			js := jsWithStore(t, tt.store)
			for range 2 {
				if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
					t.Fatal(err)
				}
				if c := eventsCap(ctx, t, js); c != tt.want {
					t.Errorf("EDGE_EVT max_bytes = %d MiB, want %d MiB", c>>20, tt.want>>20)
				}
			}
			if n := countStreams(t, js); n != 7 {
				t.Errorf("%d streams, want 7", n)
			}
			ai, err := js.AccountInfo(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ai.ReservedStore > uint64(tt.store/2) {
				t.Errorf("%d MiB reserved, want at most half the store", ai.ReservedStore>>20)
			}
			if _, err := js.Publish(ctx, subjects.Report("int_x"), []byte("{}")); err != nil {
				t.Errorf("publish to EDGE_REPORT: %v", err)
			}
			kv, err := js.KeyValue(ctx, bus.BucketGhosts)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(ctx, "g1", []byte("{}")); err != nil {
				t.Errorf("put in %s: %v", bus.BucketGhosts, err)
			}
		})
	}
}

// A cap that leaves the store no room for the assets made after EDGE_EVT is refused with a
// line that names events_max_mb and what EDGE_EVT reserves, as is the default over an
// EDGE_EVT of 4 GiB that exists on a 4 GiB store (as the default made it before it was
// fitted to half the store: it is not lowered, its events would go); a lower cap chosen
// then provisions the rest.
func TestEventsCapLeavingNoRoomIsRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tt := range []struct {
		store   int64
		prepare func(js jetstream.JetStream) error
		cfg     bus.AssetConfig
	}{
		{store: 1 << 30, cfg: bus.AssetConfig{EventsMaxBytes: 1 << 30}},
		{store: 4 << 30, prepare: func(js jetstream.JetStream) error {
			// As the default was provisioned before: EDGE_CMD, EDGE_EVT of 4 GiB, no room.
			if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{EventsMaxBytes: bus.DefaultEventsMaxBytes}); !errors.Is(err, bus.ErrEventsMaxBytes) {
				return fmt.Errorf("EDGE_EVT of 4 GiB on a 4 GiB store: %v, want ErrEventsMaxBytes", err)
			}
			return nil
		}},
	} {
		js := jsWithStore(t, tt.store)
		if tt.prepare != nil {
			if err := tt.prepare(js); err != nil {
				t.Fatal(err)
			}
		}
		err := bus.EnsureAssets(ctx, js, tt.cfg)
		want := strconv.FormatInt(eventsCap(ctx, t, js)>>20, 10) + " MiB"
		if !errors.Is(err, bus.ErrEventsMaxBytes) || !strings.Contains(err.Error(), "events_max_mb") || !strings.Contains(err.Error(), want) {
			t.Errorf("store of %d MiB, %+v: %v; want ErrEventsMaxBytes naming events_max_mb and %s", tt.store>>20, tt.cfg, err, want)
		}
		if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{EventsMaxBytes: tt.store / 4}); err != nil {
			t.Fatalf("store of %d MiB, then a cap of a quarter: %v", tt.store>>20, err)
		}
		if n := countStreams(t, js); n != 7 {
			t.Errorf("store of %d MiB: %d streams, want 7", tt.store>>20, n)
		}
	}
}

// A Ghost that floods its evt.<id> with large events of new ids rotates EDGE_EVT within
// its cap and cannot fill the JetStream store: commands are still stored.
func TestEventFloodStaysWithinItsCapAndCommandsAreStillStored(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const store, evCap = 32 << 20, 8 << 20
	ns := startServer(t, natsd.Config{DontListen: true, Sync: natsd.SyncInterval, Customize: func(o *server.Options) error {
		o.JetStreamMaxStore = store
		return nil
	}})
	js, err := jetstream.New(connect(t, bus.ConnConfig{InProcess: ns}))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{EventsMaxBytes: evCap}); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 512<<10)
	for i := range big {
		big[i] = 'x'
	}
	for i := 0; i < 2*store/len(big); i++ { // twice the whole store
		msg := nats.NewMsg("evt.rogue")
		msg.Header.Set(jetstream.MsgIDHeader, "evt_flood_"+strconv.Itoa(i))
		msg.Data = big
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatalf("flood event %d refused: %v (the cap should rotate the stream)", i, err)
		}
	}
	s, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Bytes > evCap {
		t.Errorf("EDGE_EVT holds %d bytes after the flood, over its cap of %d", info.State.Bytes, evCap)
	}
	msg := nats.NewMsg("cmd.edge-1")
	msg.Header.Set(jetstream.MsgIDHeader, "cmd_after_flood")
	msg.Data = readGolden(t, "command.json")
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatalf("a command after the flood was not stored: %v", err)
	}
}

// interruptedFit is a JetStream on which provisioning stops (the process killed, its
// deadline reached) just after the store reserved EDGE_EVT's default cap twice over, before
// the cap was lowered: the update after the first that succeeded fails.
type interruptedFit struct {
	jetstream.JetStream
	reserved bool
}

var errInterrupted = errors.New("interrupted")

func (j *interruptedFit) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if cfg.Name != bus.StreamEvents {
		return j.JetStream.CreateOrUpdateStream(ctx, cfg)
	}
	if j.reserved {
		return nil, errInterrupted
	}
	s, err := j.JetStream.CreateOrUpdateStream(ctx, cfg)
	j.reserved = err == nil
	return s, err
}

// Provisioning stopped between the reservation of twice the default cap and the cap being
// lowered leaves EDGE_EVT with twice its cap; the next provisioning fits it as one being
// made, not as a cap chosen before: it still leaves half the store to the rest (and on a
// 4 GiB store, where EDGE_EVT then holds all of it, the other assets are still made).
func TestDefaultEventsCapInterruptedIsFittedAgain(t *testing.T) {
	for _, tt := range []struct{ store, want int64 }{
		{4 << 30, 2 << 30},
		{6 << 30, 2 << 30},
	} {
		t.Run(strconv.FormatInt(tt.store>>20, 10)+"MiB", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			js := jsWithStore(t, tt.store)
			if err := bus.EnsureAssets(ctx, &interruptedFit{JetStream: js}, bus.AssetConfig{}); !errors.Is(err, errInterrupted) {
				t.Fatalf("provisioning interrupted after the reservation: %v", err)
			}
			if c := eventsCap(ctx, t, js); c != 2*tt.want {
				t.Fatalf("EDGE_EVT max_bytes = %d MiB once interrupted, want %d MiB (twice the cap)", c>>20, 2*tt.want>>20)
			}
			if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{}); err != nil {
				t.Fatalf("provisioning again: %v", err)
			}
			s, err := js.Stream(ctx, bus.StreamEvents)
			if err != nil {
				t.Fatal(err)
			}
			if c := s.CachedInfo().Config.MaxBytes; c != tt.want {
				t.Errorf("EDGE_EVT max_bytes = %d MiB, want %d MiB", c>>20, tt.want>>20)
			}
			for k := range s.CachedInfo().Config.Metadata {
				if strings.HasPrefix(k, "edgectl") {
					t.Errorf("EDGE_EVT keeps metadata %q once fitted", k)
				}
			}
			if n := countStreams(t, js); n != 7 {
				t.Errorf("%d streams, want 7", n)
			}
		})
	}
}
