package ghost_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/test/testenv"
)

// On a 4-node cluster, EDGE_CMD and KV edge_ghosts have their copies on the three servers
// other than the Ghost's, one cut off from the leader of both while a command and a
// registry record are written for each of ten ids. A Ghost without authentication reads
// both itself by direct get, some answered by the lagging replica with 404: it must find
// each id's last command and the trace of an earlier Ghost. Before, it took the 404 as
// the truth: no command to catch up, and no earlier Ghost (the commands waiting ran
// again on a new execution store).
func TestGhostReadsAreNotFooledByALaggingReplica(t *testing.T) {
	cl := testenv.NewCluster(t, 4, testenv.RouteProxies())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	meta := cl.MetaLeader()
	var others []int
	for i := range 4 {
		if i != meta {
			others = append(others, i)
		}
	}
	ghostNode, leader, lagging := others[0], others[1], others[2]
	setup := cl.Conn("test-setup", meta)
	js, err := jetstream.New(setup)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureAssets(ctx, js, bus.AssetConfig{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	streams := []string{bus.StreamCommands, "KV_" + bus.BucketGhosts}
	for _, stream := range streams {
		cl.PlaceOff(setup, js, stream, ghostNode, 3)
		cl.LeadOn(setup, js, stream, lagging)
		cl.LeadOn(setup, js, stream, leader)
		cl.WaitDirect(stream, lagging)
	}
	kv, err := js.KeyValue(ctx, bus.BucketGhosts)
	if err != nil {
		t.Fatal(err)
	}
	gnc := cl.Conn("ghost", ghostNode)

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
		data, _ := json.Marshal(map[string]any{"ghost_id": id})
		if _, err := kv.Put(ctx, id, data); err != nil {
			t.Fatalf("record of %s: %v", id, err)
		}
	}
	for i := range ids {
		id := fmt.Sprintf("ghost-lag%d", i)
		last, err := ghost.StreamLast(ctx, gnc, id)
		if err != nil || last != lastSeq[id] {
			t.Errorf("%s: last command %d (%v), want %d (a lagging replica's 404 taken as the truth)", id, last, err, lastSeq[id])
		}
		if !ghost.StreamTraced(ctx, gnc, id) {
			t.Errorf("%s: no trace of an earlier Ghost found, its record stored (a lagging replica's 404 taken as the truth)", id)
		}
	}
	for _, stream := range streams {
		if !cl.Behind(js, stream, lagging) {
			t.Fatalf("%s: %s is not behind the leader: the test did not make it lag", stream, cl.NodeName(lagging))
		}
	}
}
