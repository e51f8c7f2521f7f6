package declarative

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// answer sends content in chunks of size and then ans to reply, as Mirage does.
func answer(t *testing.T, nc *nats.Conn, reply string, content []byte, size int, ans bus.SeedAnswer) {
	t.Helper()
	for off, n := 0, 1; off < len(content); off, n = off+size, n+1 {
		msg := nats.NewMsg(reply)
		msg.Header.Set(bus.HeaderSeedChunk, strconv.Itoa(n))
		msg.Header.Set(bus.HeaderSeedSize, strconv.Itoa(len(content)))
		msg.Data = content[off:min(off+size, len(content))]
		if err := nc.PublishMsg(msg); err != nil {
			t.Error(err)
		}
	}
	data, _ := json.Marshal(ans)
	if err := nc.Publish(reply, data); err != nil {
		t.Error(err)
	}
}

// The Ghost's side of a read through Mirage, against a stand-in Mirage on a real server:
// what arrived is checked against the size and digest Mirage read, and every outcome
// maps to the code a direct-get read gives (Fetch).
func TestMirageObjectsChecksWhatArrives(t *testing.T) {
	js, _, _ := seedStore(t)
	nc := js.Conn()
	ctx := context.Background()
	content := bytes.Repeat([]byte("0123456789"), 200_000) // 2 MB
	chunks := (len(content) + bus.SeedChunkSize - 1) / bus.SeedChunkSize
	good := bus.SeedAnswer{Status: bus.SeedOK, Object: "a/1/spec.toml", Size: uint64(len(content)), Digest: ObjectDigest(content), Chunks: chunks}
	scenarios := []struct {
		name  string
		serve func(reply string)
		code  bus.Code // 0: read as content
		says  string
	}{
		{"whole", func(r string) { answer(t, nc, r, content, bus.SeedChunkSize, good) }, 0, ""},
		{"altered on the way", func(r string) {
			bad := bytes.Clone(content)
			bad[len(bad)-1] = 'x'
			answer(t, nc, r, bad, bus.SeedChunkSize, good)
		}, bus.CodeSecurity, "corrupt"},
		{"short", func(r string) {
			a := good
			a.Chunks = chunks - 1
			answer(t, nc, r, content[:(chunks-1)*bus.SeedChunkSize], bus.SeedChunkSize, a)
		}, bus.CodeSecurity, "corrupt"},
		{"a chunk lost", func(r string) {
			answer(t, nc, r, content[:bus.SeedChunkSize], bus.SeedChunkSize, good)
		}, bus.CodeRuntime, "could not be read"},
		{"not found", func(r string) {
			answer(t, nc, r, nil, 1, bus.SeedAnswer{Status: bus.SeedNotFound, Object: "a/1/spec.toml", Error: bus.Errorf(bus.CodeSemantic, "object not found")})
		}, bus.CodeSemantic, "push the seed first"},
		{"store corrupt", func(r string) {
			answer(t, nc, r, nil, 1, bus.SeedAnswer{Status: bus.SeedCorrupt, Object: "a/1/spec.toml", Error: bus.Errorf(bus.CodeSecurity, "digest mismatch: the chunks do not match the meta's digest")})
		}, bus.CodeSecurity, "the chunks do not match the meta's digest"},
		{"unreadable", func(r string) {
			answer(t, nc, r, nil, 1, bus.SeedAnswer{Status: bus.SeedUnreadable, Object: "a/1/spec.toml", Error: bus.Errorf(bus.CodeRuntime, "chunk missing: chunk 2 of 4")})
		}, bus.CodeRuntime, "chunk 2 of 4"},
		{"rejected", func(r string) {
			answer(t, nc, r, nil, 1, bus.SeedAnswer{Status: bus.SeedRejected, Error: bus.FieldError(bus.CodeSemantic, "object", "bad name")})
		}, bus.CodeSemantic, "bad name"},
		{"busy", func(r string) {
			answer(t, nc, r, nil, 1, bus.SeedAnswer{Status: bus.SeedBusy, Error: bus.Errorf(bus.CodeBusy, "being served")})
		}, bus.CodeBusy, "being served"},
		{"no Mirage", func(string) {}, bus.CodeRuntime, "no Mirage answered on " + subjects.SeedFor("g1")},
		// An answer that started and stopped is not "no Mirage": it says how much arrived.
		{"stalls", func(r string) {
			for n := 1; n <= 3; n++ {
				msg := nats.NewMsg(r)
				msg.Header.Set(bus.HeaderSeedChunk, strconv.Itoa(n))
				msg.Header.Set(bus.HeaderSeedSize, strconv.Itoa(len(content)))
				msg.Data = content[(n-1)*bus.SeedChunkSize : n*bus.SeedChunkSize]
				_ = nc.PublishMsg(msg)
			}
		}, bus.CodeRuntime, "the answer from Mirage stalled after " + strconv.Itoa(3*bus.SeedChunkSize) + " of " + strconv.Itoa(len(content)) + " bytes"},
		// Mirage waits for a read slot and reads the store before its first message; then
		// the pieces come slowly, the whole answer far longer than any one wait.
		{"slow but steady", func(r string) {
			time.Sleep(400 * time.Millisecond)
			for off, n := 0, 1; off < len(content); off, n = off+bus.SeedChunkSize, n+1 {
				if n > 1 {
					time.Sleep(80 * time.Millisecond)
				}
				msg := nats.NewMsg(r)
				msg.Header.Set(bus.HeaderSeedChunk, strconv.Itoa(n))
				msg.Data = content[off:min(off+bus.SeedChunkSize, len(content))]
				_ = nc.PublishMsg(msg)
			}
			answer(t, nc, r, nil, 1, good)
		}, 0, ""},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			var mu sync.Mutex
			var asked []bus.SeedRequest
			var askedAt []time.Time
			sub, err := nc.Subscribe(subjects.SeedFor("g1"), func(m *nats.Msg) {
				var req bus.SeedRequest
				_ = json.Unmarshal(m.Data, &req)
				mu.Lock()
				asked = append(asked, req)
				askedAt = append(askedAt, time.Now())
				mu.Unlock()
				if !strings.HasPrefix(m.Reply, bus.GhostInbox("g1")+".") {
					t.Errorf("reply subject %q is not the Ghost's inbox", m.Reply)
				}
				sc.serve(m.Reply)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = sub.Unsubscribe() }()
			o := NewMirageObjects(nc, "g1")
			// Scaled down from bus.SeedFirstWait, bus.SeedPieceWait and bus.SeedEvery.
			o.firstWait, o.pieceWait, o.every = 600*time.Millisecond, 200*time.Millisecond, 300*time.Millisecond
			began := time.Now()
			got, err := Fetch(ctx, o, "a/1/spec.toml", Digest(content), MaxFileSize)
			if sc.code == 0 {
				if err != nil || !bytes.Equal(got, content) {
					t.Fatalf("read %d bytes, %v", len(got), err)
				}
			} else if perr := bus.AsError(err); err == nil || perr.Code != sc.code || !strings.Contains(perr.Message, sc.says) {
				t.Fatalf("error %v, want %d saying %q", err, sc.code, sc.says)
			}
			if sc.name == "slow but steady" && time.Since(began) < o.firstWait+2*o.pieceWait {
				t.Fatalf("the slow answer took %s: not slow enough to test anything", time.Since(began))
			}
			mu.Lock()
			defer mu.Unlock()
			if len(asked) == 0 || asked[0].Object != "a/1/spec.toml" || asked[0].MaxSize != MaxFileSize {
				t.Fatalf("requests %+v", asked)
			}
			if sc.code != bus.CodeBusy && len(asked) != 1 {
				t.Fatalf("%d requests, want 1", len(asked))
			}
			if sc.code == bus.CodeBusy && len(asked) != busyAttempts {
				t.Fatalf("%d requests on busy answers, want %d", len(asked), busyAttempts)
			}
			// Mirage answers busy a request sooner than bus.SeedEvery after the last.
			for i := 1; i < len(askedAt); i++ {
				if gap := askedAt[i].Sub(askedAt[i-1]); gap < o.every {
					t.Fatalf("request %d sent %s after the one before, want at least %s", i+1, gap, o.every)
				}
			}
		})
	}
	// The direct-get reader reports a missing object the same way.
	_, _, objects := seedStore(t)
	if _, err := Fetch(ctx, objects, "a/1/spec.toml", Digest(content), MaxFileSize); !strings.Contains(err.Error(), "push the seed first") {
		t.Fatalf("direct get of a missing object: %v", err)
	}
}

func TestReadOutcome(t *testing.T) {
	for _, tt := range []struct {
		err    error
		status string
		code   bus.Code
	}{
		{nil, bus.SeedOK, 0},
		{jetstream.ErrObjectNotFound, bus.SeedNotFound, bus.CodeSemantic},
		{ErrObjectTooLarge, bus.SeedTooLarge, bus.CodeSemantic},
		{ErrChunkMissing, bus.SeedUnreadable, bus.CodeRuntime},
		{jetstream.ErrDigestMismatch, bus.SeedCorrupt, bus.CodeSecurity},
		{errors.New("nats: timeout"), bus.SeedFailed, bus.CodeRuntime},
	} {
		if status, code := ReadOutcome(tt.err); status != tt.status || code != tt.code {
			t.Errorf("ReadOutcome(%v) = %s %d, want %s %d", tt.err, status, code, tt.status, tt.code)
		}
	}
}

func TestValidateObjectName(t *testing.T) {
	for _, ok := range []string{"node.system/1.0.0/spec.toml", "node.system/1.0.0/manifest.json", "svc/1/files/run.sh", "svc/latest.json", "svc/1/custom/spec.toml"} {
		if err := ValidateObjectName(ok); err != nil {
			t.Errorf("ValidateObjectName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "svc", "svc/", "svc/1", "svc/1/", "svc/other.json", "../x/1/spec.toml", "svc/../spec.toml", "svc/1/../../x",
		"svc/1//x", "svc/1/./x", "Svc/1/spec.toml", "ghost/1/spec.toml", "seed.flow/1/spec.toml", "svc/1/spec toml", "svc/1/spec\x00", "/svc/1/spec.toml",
		"svc/1/" + strings.Repeat("a", 400)} {
		if err := ValidateObjectName(bad); err == nil {
			t.Errorf("ValidateObjectName(%q) accepted it", bad)
		}
	}
}

// A boot install's manifest read through Mirage waits for Mirage's first answer as
// MirageObjects does (Mirage may be busy up to bus.SeedFirstWait), not only the bound of
// a read from the store itself.
func TestFetchManifestThroughMirageWaitsForMirage(t *testing.T) {
	js, _, _ := seedStore(t)
	nc := js.Conn()
	old := manifestTimeout
	manifestTimeout = 100 * time.Millisecond
	t.Cleanup(func() { manifestTimeout = old })
	spec := []byte("spec")
	m := Manifest{ID: "svc.late", Version: "1.0.0", Spec: Entry{Name: "spec.toml", Object: "svc.late/1.0.0/spec.toml", SHA256: Digest(spec), Size: int64(len(spec))},
		Files: []Entry{{Name: "big.bin", Object: "svc.late/1.0.0/files/big.bin", SHA256: Digest([]byte("big")), Size: 20 << 20}}}
	content, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.Subscribe(subjects.SeedFor("g1"), func(msg *nats.Msg) {
		time.Sleep(4 * manifestTimeout) // a busy Mirage
		answer(t, nc, msg.Reply, content, bus.SeedChunkSize, bus.SeedAnswer{Status: bus.SeedOK, Object: LatestObject("svc.late"),
			Size: uint64(len(content)), Digest: ObjectDigest(content), Chunks: 1})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	o := NewMirageObjects(nc, "g1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := FetchManifest(ctx, o, "svc.late", "")
	if err != nil {
		t.Fatalf("manifest answered after %s: %v", 4*manifestTimeout, err)
	}
	// The sizes too: a boot install's time bound grows with them.
	if got.ID != m.ID || got.Version != m.Version || got.Spec != m.Spec || len(got.Files) != 1 || got.Files[0] != m.Files[0] {
		t.Fatalf("manifest %+v, want %+v", got, m)
	}
}
