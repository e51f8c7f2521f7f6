package bus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
)

// A replica count the server cannot keep is refused with ErrReplicas and a message that
// names the count and what the server offers, before any asset is created. (On a cluster
// too few servers are covered by test/cluster_test.go.)
func TestEnsureAssetsRefusesReplicasTheServerCannotKeep(t *testing.T) {
	ns := startServer(t, bus.ServerConfig{DontListen: true})
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
