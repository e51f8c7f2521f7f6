package declarative

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

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

func TestObjectsReadByDirectGet(t *testing.T) {
	js, obs, objects := seedStore(t)
	ctx := context.Background()
	// Several chunks, with other objects' chunks stored in between.
	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	small := &jetstream.ObjectMetaOptions{ChunkSize: 1000}
	for _, name := range []string{"a/1/spec.toml", "b/1/spec.toml"} {
		if _, err := obs.Put(ctx, jetstream.ObjectMeta{Name: name, Opts: small}, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := obs.PutBytes(ctx, "empty", nil); err != nil {
		t.Fatal(err)
	}
	read := func(name string) ([]byte, error) {
		info, err := objects.Info(ctx, name)
		if err != nil {
			return nil, err
		}
		return objects.Read(ctx, info)
	}
	for _, name := range []string{"a/1/spec.toml", "b/1/spec.toml"} {
		if got, err := read(name); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: %d bytes, %v; want the %d bytes stored", name, len(got), err, len(data))
		}
	}
	if got, err := read("empty"); err != nil || len(got) != 0 {
		t.Fatalf("empty object: %q, %v", got, err)
	}
	if _, err := read("missing"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("missing object: %v, want ErrObjectNotFound", err)
	}
	if err := obs.Delete(ctx, "b/1/spec.toml"); err != nil {
		t.Fatal(err)
	}
	if _, err := read("b/1/spec.toml"); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("deleted object: %v, want ErrObjectNotFound", err)
	}

	// Corruption: a meta whose digest or size is not its chunks', a chunk gone.
	stream, err := js.Stream(ctx, "OBJ_"+bus.BucketSeeds)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.GetInfo(ctx, "a/1/spec.toml")
	if err != nil {
		t.Fatal(err)
	}
	rewrite := func(edit func(*jetstream.ObjectInfo)) {
		t.Helper()
		bad := *info
		edit(&bad)
		meta, err := json.Marshal(&bad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, "$O."+bus.BucketSeeds+".M."+base64.URLEncoding.EncodeToString([]byte(info.Name)), meta); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name string
		edit func(*jetstream.ObjectInfo)
	}{
		{"other digest", func(i *jetstream.ObjectInfo) {
			i.Digest = "SHA-256=" + base64.URLEncoding.EncodeToString(make([]byte, 32))
		}},
		{"larger size", func(i *jetstream.ObjectInfo) { i.Size++ }},
		{"smaller size", func(i *jetstream.ObjectInfo) { i.Size-- }},
		{"more chunks", func(i *jetstream.ObjectInfo) { i.Chunks++ }},
		{"fewer chunks", func(i *jetstream.ObjectInfo) { i.Chunks-- }},
	}
	for _, c := range cases {
		rewrite(c.edit)
		if _, err := read(info.Name); !errors.Is(err, jetstream.ErrDigestMismatch) {
			t.Errorf("%s: %v, want ErrDigestMismatch", c.name, err)
		}
	}
	rewrite(func(*jetstream.ObjectInfo) {})
	if _, err := read(info.Name); err != nil {
		t.Fatalf("the meta restored: %v", err)
	}
	first, err := stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject("$O."+bus.BucketSeeds+".C."+info.NUID))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.DeleteMsg(ctx, first.Sequence+1); err != nil {
		t.Fatal(err)
	}
	if _, err := read(info.Name); !errors.Is(err, jetstream.ErrDigestMismatch) {
		t.Fatalf("a chunk gone: %v, want ErrDigestMismatch", err)
	}
	// Fetch says so with the security code, and nothing is returned.
	got, err := Fetch(ctx, objects, info.Name, Digest(data), MaxFileSize)
	var perr *bus.Error
	if got != nil || !errors.As(err, &perr) || perr.Code != bus.CodeSecurity || !strings.Contains(perr.Message, "corrupt") {
		t.Fatalf("Fetch of a corrupt object: %d bytes, %v; want a 1800 saying corrupt", len(got), err)
	}
}
