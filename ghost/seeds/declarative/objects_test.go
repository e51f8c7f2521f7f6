package declarative

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/natsd"
)

// seedStore starts an embedded server with edge_seeds and returns it through jetstream
// (to write objects as a push does) and through Objects (to read them as a Ghost does).
func seedStore(t *testing.T) (jetstream.JetStream, jetstream.ObjectStore, *Objects) {
	t.Helper()
	ns, err := natsd.Start(natsd.Config{DontListen: true, StoreDir: filepath.Join(t.TempDir(), "js")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	nc, err := bus.Connect(context.Background(), bus.ConnConfig{InProcess: ns.Server, Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{Replicas: 1}); err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctx, bus.BucketSeeds)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := OpenObjects(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	return js, obs, objects
}

// handPut stores objects as the object store lays them out, but with their chunks
// published round-robin, so in stream order each object's chunks have the others' in
// between, then each object's meta. It returns the metas by name.
func handPut(t *testing.T, js jetstream.JetStream, chunkSize int, objects map[string][]byte) map[string]*jetstream.ObjectInfo {
	t.Helper()
	ctx := context.Background()
	names := make([]string, 0, len(objects))
	for name := range objects {
		names = append(names, name)
	}
	sort.Strings(names)
	infos := map[string]*jetstream.ObjectInfo{}
	for _, name := range names {
		data := objects[name]
		sum := sha256.Sum256(data)
		infos[name] = &jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: name}, Bucket: bus.BucketSeeds,
			NUID: nuid.Next(), Size: uint64(len(data)), Chunks: uint32((len(data) + chunkSize - 1) / chunkSize),
			Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:])}
	}
	for off, more := 0, true; more; off += chunkSize {
		more = false
		for _, name := range names {
			data := objects[name]
			if off >= len(data) {
				continue
			}
			more = true
			chunk := data[off:min(off+chunkSize, len(data))]
			if _, err := js.Publish(ctx, "$O."+bus.BucketSeeds+".C."+infos[name].NUID, chunk); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, name := range names {
		putMeta(t, js, infos[name])
	}
	return infos
}

// putMeta publishes info as its object's meta, as ObjectStore.Put does.
func putMeta(t *testing.T, js jetstream.JetStream, info *jetstream.ObjectInfo) {
	t.Helper()
	meta, err := json.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg("$O." + bus.BucketSeeds + ".M." + base64.URLEncoding.EncodeToString([]byte(info.Name)))
	msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	msg.Data = meta
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

func TestObjectsReadByDirectGet(t *testing.T) {
	js, obs, objects := seedStore(t)
	ctx := context.Background()
	// Several chunks of each object, each chunk between two of the other object's:
	// reading must follow the object's own chunk subject, skipping the other's.
	data := map[string][]byte{
		"a/1/spec.toml": bytes.Repeat([]byte("0123456789abcdef"), 1000),
		"b/1/spec.toml": bytes.Repeat([]byte("fedcba9876543210"), 1000),
	}
	infos := handPut(t, js, 1000, data)
	stream, err := js.Stream(ctx, "OBJ_"+bus.BucketSeeds)
	if err != nil {
		t.Fatal(err)
	}
	chunkSeq := func(name string, from uint64) uint64 {
		t.Helper()
		msg, err := stream.GetMsg(ctx, from, jetstream.WithGetMsgSubject("$O."+bus.BucketSeeds+".C."+infos[name].NUID))
		if err != nil {
			t.Fatal(err)
		}
		return msg.Sequence
	}
	if a1 := chunkSeq("a/1/spec.toml", 1); chunkSeq("a/1/spec.toml", a1+1) != a1+2 || chunkSeq("b/1/spec.toml", a1) != a1+1 {
		t.Fatal("the chunks of a and b are not interleaved in the stream")
	}
	if _, err := obs.PutBytes(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	read := func(name string) ([]byte, error) { return objects.Get(ctx, name, MaxFileSize) }
	for name, want := range data {
		if got, err := read(name); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes, %v; want the %d bytes stored", name, len(got), err, len(want))
		}
		// The layout is the object store's own: its client reads the same.
		if got, err := obs.GetBytes(ctx, name); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s through the object store: %d bytes, %v", name, len(got), err)
		}
	}
	if got, err := read("empty"); err != nil || len(got) != 0 {
		t.Fatalf("empty object: %q, %v", got, err)
	}
	if _, err := read("missing"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("missing object: %v, want ErrObjectNotFound", err)
	}
	if _, err := objects.Get(ctx, "a/1/spec.toml", 100); !errors.Is(err, ErrObjectTooLarge) {
		t.Fatalf("an object over the limit: %v, want ErrObjectTooLarge", err)
	}
	if err := obs.Delete(ctx, "b/1/spec.toml"); err != nil {
		t.Fatal(err)
	}
	if _, err := read("b/1/spec.toml"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("deleted object: %v, want ErrObjectNotFound", err)
	}
}

// A meta that does not match its chunks, every chunk read, is corruption (1800); a chunk
// that stays missing is not: it is a read that failed (1400), to retry.
func TestObjectsCorrupt(t *testing.T) {
	js, obs, objects := seedStore(t)
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	info, err := obs.Put(ctx, jetstream.ObjectMeta{Name: "a/1/spec.toml", Opts: &jetstream.ObjectMetaOptions{ChunkSize: 1000}}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	rewrite := func(edit func(*jetstream.ObjectInfo)) {
		t.Helper()
		bad := *info
		edit(&bad)
		putMeta(t, js, &bad)
	}
	read := func() ([]byte, error) { return objects.Get(ctx, info.Name, MaxFileSize) }
	cases := []struct {
		name string
		edit func(*jetstream.ObjectInfo)
		want error
	}{
		{"other digest", func(i *jetstream.ObjectInfo) {
			i.Digest = "SHA-256=" + base64.URLEncoding.EncodeToString(make([]byte, 32))
		}, jetstream.ErrDigestMismatch},
		{"larger size", func(i *jetstream.ObjectInfo) { i.Size++ }, jetstream.ErrDigestMismatch},
		{"smaller size", func(i *jetstream.ObjectInfo) { i.Size-- }, jetstream.ErrDigestMismatch},
		{"fewer chunks", func(i *jetstream.ObjectInfo) { i.Chunks-- }, jetstream.ErrDigestMismatch},
		{"more chunks", func(i *jetstream.ObjectInfo) { i.Chunks++ }, ErrChunkMissing},
	}
	for _, c := range cases {
		rewrite(c.edit)
		if _, err := read(); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	rewrite(func(i *jetstream.ObjectInfo) {
		i.Digest = "SHA-256=" + base64.URLEncoding.EncodeToString(make([]byte, 32))
	})
	// Fetch says so with the security code, and nothing is returned.
	got, err := Fetch(ctx, objects, info.Name, Digest(data), MaxFileSize)
	var perr *bus.Error
	if got != nil || !errors.As(err, &perr) || perr.Code != bus.CodeSecurity || !strings.Contains(perr.Message, "corrupt") {
		t.Fatalf("Fetch of a corrupt object: %d bytes, %v; want a 1800 saying corrupt", len(got), err)
	}

	rewrite(func(*jetstream.ObjectInfo) {})
	if _, err := read(); err != nil {
		t.Fatalf("the meta restored: %v", err)
	}
	stream, err := js.Stream(ctx, "OBJ_"+bus.BucketSeeds)
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject("$O."+bus.BucketSeeds+".C."+info.NUID))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(ctx, first.Sequence+1); err != nil {
		t.Fatal(err)
	}
	if _, err := read(); !errors.Is(err, ErrChunkMissing) || errors.Is(err, jetstream.ErrDigestMismatch) {
		t.Fatalf("a chunk gone: %v, want ErrChunkMissing", err)
	}
	got, err = Fetch(ctx, objects, info.Name, Digest(data), MaxFileSize)
	if got != nil || !errors.As(err, &perr) || perr.Code != bus.CodeRuntime || !strings.Contains(perr.Message, "could not be read") {
		t.Fatalf("Fetch with a chunk missing: %d bytes, %v; want a 1400 saying it could not be read", len(got), err)
	}
}

// An object put again under the same name (latest.json on every push) purges the chunks
// of the meta a Ghost may have just read: the read follows the new meta.
func TestObjectsReadAfterRePut(t *testing.T) {
	_, obs, objects := seedStore(t)
	ctx := context.Background()
	small := &jetstream.ObjectMetaOptions{ChunkSize: 100}
	name := LatestObject("node.system")
	if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: name, Opts: small}, strings.NewReader(strings.Repeat("1", 1000))); err != nil {
		t.Fatal(err)
	}
	old, err := objects.Info(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	v2 := strings.Repeat("2", 1200)
	if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: name, Opts: small}, strings.NewReader(v2)); err != nil {
		t.Fatal(err)
	}
	// The race itself: the old meta's chunks are gone.
	if _, err := objects.read(ctx, old); !errors.Is(err, ErrChunkMissing) {
		t.Fatalf("reading the old meta's chunks once: %v, want ErrChunkMissing", err)
	}
	got, err := objects.readFrom(ctx, old, MaxSpecSize)
	if err != nil || string(got) != v2 {
		t.Fatalf("reading from the old meta: %d bytes, %v; want the %d bytes put again", len(got), err, len(v2))
	}
	// Put again, then deleted: the object is gone, not corrupt.
	if err := obs.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := objects.readFrom(ctx, old, MaxSpecSize); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("reading from the old meta of a deleted object: %v, want ErrObjectNotFound", err)
	}
}

// A chunk not there yet (a replica behind the one that answered the meta) is read again.
func TestObjectsChunkArrivesLate(t *testing.T) {
	js, _, objects := seedStore(t)
	ctx := context.Background()
	data := bytes.Repeat([]byte("late"), 100)
	sum := sha256.Sum256(data)
	info := &jetstream.ObjectInfo{ObjectMeta: jetstream.ObjectMeta{Name: "late"}, Bucket: bus.BucketSeeds,
		NUID: nuid.Next(), Size: uint64(len(data)), Chunks: 2, Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:])}
	chunks := "$O." + bus.BucketSeeds + ".C." + info.NUID
	if _, err := js.Publish(ctx, chunks, data[:200]); err != nil {
		t.Fatal(err)
	}
	putMeta(t, js, info)
	published := make(chan error, 1)
	go func() {
		time.Sleep(readBackoff / 2)
		_, err := js.Publish(ctx, chunks, data[200:])
		published <- err
	}()
	got, err := objects.Get(ctx, info.Name, MaxFileSize)
	if perr := <-published; perr != nil {
		t.Fatal(perr)
	}
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("a chunk arriving late: %d bytes, %v; want the %d bytes", len(got), err, len(data))
	}
}
