package test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/mirage"
	"github.com/edgectl/edgectl/test/testenv"
)

// On a 4-node cluster with the assets at replicas 3, a replica of KV edge_ghosts is cut
// off from the stream's leader (their routes dropped; both still talk to the other
// servers), and Ghost records are written: the leader stores them with the third replica,
// the cut-off one lags. A client on the fourth server (no replica) reads the fleet: its
// direct gets go to any of the three replicas, the lagging one too, which answers 404 for
// a record written since the cut and the older record of one written again. Every read of
// the fleet must hold every record, each at its latest. Before, readFleet took the lagging
// replica's 404 for a key deleted since the listing and skipped the Ghost, and its older
// record for the latest (miragectl ghosts, Mirage's fleet at start).
func TestClusterFleetReadIsNotFooledByALaggingReplica(t *testing.T) {
	cl := testenv.NewCluster(t, 4, testenv.RouteProxies())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const stream = "KV_" + bus.BucketGhosts

	setup := cl.Conn("test-setup", 0)
	sjs, err := jetstream.New(setup)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureAssets(ctx, sjs, bus.AssetConfig{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	peers := func() (leader string, all []string) {
		s, err := sjs.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil || info.Cluster == nil {
			t.Fatalf("stream %s info: %v", stream, err)
		}
		all = []string{info.Cluster.Leader}
		for _, r := range info.Cluster.Replicas {
			all = append(all, r.Name)
		}
		return info.Cluster.Leader, all
	}
	metaLeader := func() int {
		for i := range 4 {
			if cl.Server(i).JetStreamIsLeader() {
				return i
			}
		}
		return -1
	}
	var meta int
	testenv.Eventually(t, 15*time.Second, "a meta leader", func() bool { meta = metaLeader(); return meta >= 0 })
	_, all := peers()
	if len(all) != 3 {
		t.Fatalf("%s has peers %v, want 3", stream, all)
	}
	// Neither the leader nor the lagging replica may be the meta leader: the one cut off
	// from it would miss the placement of the listing's consumer, were it placed there.
	leader, lagging, client := -1, -1, -1
	for _, p := range all {
		switch i := cl.Index(p); {
		case i == meta:
		case leader < 0:
			leader = i
		case lagging < 0:
			lagging = i
		}
	}
	for i := range 4 {
		if !slices.Contains(all, cl.NodeName(i)) {
			client = i
		}
	}
	if leader < 0 || lagging < 0 || client < 0 {
		t.Fatalf("leader %d, lagging %d, client %d (peers %v, meta leader %s)", leader, lagging, client, all, cl.NodeName(meta))
	}
	// A follower joins the queue group that answers direct gets once it has lost the
	// leadership (and is caught up, checked every 2 s): the one to lag leads first.
	colocateLeader(t, cl, setup, sjs, stream, lagging)
	colocateLeader(t, cl, setup, sjs, stream, leader)
	testenv.Eventually(t, 15*time.Second, cl.NodeName(lagging)+" to answer direct gets", func() bool {
		sz, err := cl.Server(lagging).Subsz(&server.SubszOptions{Subscriptions: true, Account: "$G",
			Test: "$JS.API.DIRECT.GET." + stream + ".$KV." + bus.BucketGhosts + ".ghost-again"})
		if err != nil {
			return false
		}
		for _, sub := range sz.Subs {
			if sub.Queue != "" {
				return true
			}
		}
		return false
	})
	t.Logf("%s: leader %s, lagging %s, meta leader %s; client on %s", stream, cl.NodeName(leader), cl.NodeName(lagging), cl.NodeName(meta), cl.NodeName(client))

	nc := cl.Conn("test-client", client)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, bus.BucketGhosts)
	if err != nil {
		t.Fatal(err)
	}
	put := func(id, version string) {
		t.Helper()
		data, _ := json.Marshal(mirage.GhostRecord{GhostID: id, Version: version, RegisteredMS: 1})
		if _, err := kv.Put(ctx, id, data); err != nil {
			t.Fatalf("put %s: %v", id, err)
		}
	}
	// Written before the cut, on every replica; written again after it.
	put("ghost-again", "v1")
	testenv.Eventually(t, 10*time.Second, "every replica to hold the first record", func() bool {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return false
		}
		info, err := s.Info(ctx)
		if err != nil || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			return false
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current || r.Lag != 0 {
				return false
			}
		}
		return true
	})

	// The stream's replicas hold elections after 4 s without their leader at the
	// earliest: everything below is done well within that.
	cl.CutRoutes(leader, lagging)
	defer cl.RestoreRoutes(leader, lagging)
	cutAt := time.Now()
	const fresh = 8
	want := []string{"ghost-again"}
	for i := range fresh {
		id := fmt.Sprintf("ghost-new%d", i)
		put(id, "v1")
		want = append(want, id)
	}
	put("ghost-again", "v2")
	slices.Sort(want)

	// The lagging replica answers direct gets: some of the client's go to it (a queue
	// group of the replicas that answer them, none on the client's server).
	notFound, asked := 0, 0
	for ; asked < 60 && notFound < 3; asked++ {
		msg, err := nc.Request(fmt.Sprintf("$JS.API.DIRECT.GET.%s.$KV.%s.ghost-new%d", stream, bus.BucketGhosts, asked%fresh), nil, 2*time.Second)
		if err == nil && msg.Header.Get("Status") == "404" {
			notFound++
		}
	}
	t.Logf("direct gets answered 404 for records stored: %d of %d", notFound, asked)
	if notFound == 0 {
		for _, p := range all {
			sz, _ := cl.Server(cl.Index(p)).Subsz(&server.SubszOptions{Subscriptions: true, Account: "$G",
				Test: "$JS.API.DIRECT.GET." + stream + ".$KV." + bus.BucketGhosts + ".ghost-again"})
			t.Logf("%s: subscriptions %+v", p, sz.Subs)
		}
		logReplicas(t, js, stream)
		t.Fatalf("no direct get was answered by the lagging replica: the test did not make one lag")
	}

	for round := range 4 {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		recs, err := mirage.ReadFleet(rctx, js)
		rcancel()
		if err != nil {
			t.Fatalf("read %d: %v", round, err)
		}
		var got []string
		for _, r := range recs {
			got = append(got, r.GhostID)
			if r.GhostID == "ghost-again" && r.Version != "v2" {
				t.Errorf("read %d: ghost-again at version %s, want v2 (a lagging replica's older record)", round, r.Version)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("read %d: the fleet holds %v, want %v (a lagging replica's 404 taken for a deleted key)", round, got, want)
		}
	}
	if since := time.Since(cutAt); since > 4*time.Second {
		t.Logf("the reads ended %v after the cut: a replica may have held an election meanwhile", since)
	}
	logReplicas(t, js, stream)
}

// logReplicas logs what the leader of stream says of its replicas.
func logReplicas(t *testing.T, js jetstream.JetStream, stream string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s, err := js.Stream(ctx, stream); err == nil {
		if info, err := s.Info(ctx); err == nil && info.Cluster != nil {
			t.Logf("%s: leader %s", stream, info.Cluster.Leader)
			for _, r := range info.Cluster.Replicas {
				t.Logf("replica %s: current %v, lag %d", r.Name, r.Current, r.Lag)
			}
		}
	}
}

// On a 4-node cluster, EDGE_CMD and KV edge_ghosts have their copies on the three servers
// other than Mirage's, one of them cut off from the leader of both while a command and a
// Ghost's record are written for each of ten ids; Mirage, asked for each id's replay (the
// trace of an earlier Ghost too), reads both by direct get, some answered by the lagging
// replica with 404. Every answer must give the id's last command and say it is traced.
// Before, such a 404 was taken as the truth: "no command to catch up", and "no earlier
// Ghost" (the commands waiting for a Ghost on a new store ran again).
func TestClusterReplayReadsAreNotFooledByALaggingReplica(t *testing.T) {
	cl := testenv.NewCluster(t, 4, testenv.RouteProxies())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	meta := cl.MetaLeader()
	// Mirage's server holds no copy: its direct gets go to the replicas at random, the
	// lagging one too, and its message gets reach the leader.
	var others []int
	for i := range 4 {
		if i != meta {
			others = append(others, i)
		}
	}
	mirageNode, leader, lagging := others[0], others[1], others[2]
	setup := cl.Conn("test-setup", meta)
	sjs, err := jetstream.New(setup)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureAssets(ctx, sjs, bus.AssetConfig{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	streams := []string{bus.StreamCommands, "KV_" + bus.BucketGhosts}
	for _, stream := range streams {
		cl.PlaceOff(setup, sjs, stream, mirageNode, 3)
		cl.LeadOn(setup, sjs, stream, lagging)
		cl.LeadOn(setup, sjs, stream, leader)
		cl.WaitDirect(stream, lagging)
	}
	t.Logf("replicas on %s (meta leader), %s (leader), %s (lagging); Mirage on %s", cl.NodeName(meta), cl.NodeName(leader), cl.NodeName(lagging), cl.NodeName(mirageNode))
	env := cl.Env()
	env.StartMirageOn(cl.Conn("mirage", mirageNode), mirage.Config{Replicas: 3})
	nc := cl.Conn("test-client", meta)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, bus.BucketGhosts)
	if err != nil {
		t.Fatal(err)
	}

	cl.CutRoutes(leader, lagging)
	defer cl.RestoreRoutes(leader, lagging)
	const ids = 10
	lastSeq := map[string]uint64{}
	for i := range ids {
		id := fmt.Sprintf("ghost-lag%d", i)
		ack, err := js.Publish(ctx, "cmd."+id, []byte(`{"command_id":"c-`+id+`"}`))
		if err != nil {
			t.Fatalf("command for %s: %v", id, err)
		}
		lastSeq[id] = ack.Sequence
		data, _ := json.Marshal(mirage.GhostRecord{GhostID: id, RegisteredMS: 1})
		if _, err := kv.Put(ctx, id, data); err != nil {
			t.Fatalf("record of %s: %v", id, err)
		}
	}
	for i := range ids {
		id := fmt.Sprintf("ghost-lag%d", i)
		req, _ := json.Marshal(bus.ReplayRequest{StartSeq: 1, Max: 0, History: true})
		msg, err := nc.Request("mirage.replay."+id, req, 5*time.Second)
		if err != nil {
			t.Fatalf("replay of %s: %v", id, err)
		}
		var reply bus.ReplayReply
		if err := json.Unmarshal(msg.Data, &reply); err != nil {
			t.Fatalf("replay of %s: %s", id, msg.Data)
		}
		if reply.Status != "accepted" || reply.LastSeq != lastSeq[id] || reply.Traced == nil || !*reply.Traced {
			t.Errorf("replay of %s: %s; want last_seq %d, traced (a lagging replica's 404 taken as the truth)", id, msg.Data, lastSeq[id])
		}
	}
	for _, stream := range streams {
		logReplicas(t, js, stream)
		if !cl.Behind(js, stream, lagging) {
			t.Fatalf("%s: %s is not behind the leader: the test did not make it lag", stream, cl.NodeName(lagging))
		}
	}
}

// behind reports whether the leader of stream reports replica name behind it.
func behind(js jetstream.JetStream, stream, name string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return false
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return false
	}
	for _, r := range info.Cluster.Replicas {
		if r.Name == name {
			return !r.Current || r.Lag > 0
		}
	}
	return false
}
