package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/subjects"
)

// JetStream asset names (CONTRACT.md).
const (
	StreamCommands = "EDGE_CMD"
	StreamEvents   = "EDGE_EVT"
	StreamReports  = "EDGE_REPORT"
	BucketGhosts   = "edge_ghosts"
	BucketIntents  = "edge_intents"
	BucketFleet    = "edge_fleet"
	// BucketSeeds is the object store of pushed declarative seeds: specs and their files,
	// each object with its SHA-256 digest (ghost/seeds/declarative names the objects).
	BucketSeeds = "edge_seeds"
)

// Retention of the assets. Commands live as long as the longest intent may, so that a
// Ghost that comes back can replay what it missed; events and reports a week.
const (
	CommandRetention = 25 * time.Hour
	EventRetention   = 7 * 24 * time.Hour
	ReportRetention  = 7 * 24 * time.Hour
	// DuplicateWindow is the JetStream de-duplication window by Nats-Msg-Id (the seed's
	// 15 minutes).
	DuplicateWindow = 15 * time.Minute
)

// AssetConfig says how the assets are provisioned.
type AssetConfig struct {
	// Replicas is 1 on an embedded server, 3 on a cluster.
	Replicas int
}

// EnsureAssets creates or updates the streams, KV buckets and object store edgectl uses. It is
// idempotent: running it against provisioned assets changes nothing.
func EnsureAssets(ctx context.Context, js jetstream.JetStream, cfg AssetConfig) error {
	r := cfg.Replicas
	if r <= 0 {
		r = 1
	}
	streams := []jetstream.StreamConfig{
		{Name: StreamCommands, Subjects: []string{subjects.AllCommands}, Description: "edgectl commands, Mirage to Ghost",
			MaxAge: CommandRetention, Duplicates: DuplicateWindow, MaxMsgSize: MaxEnvelope, AllowDirect: true},
		{Name: StreamEvents, Subjects: []string{subjects.AllEvents}, Description: "edgectl events, Ghost to Mirage",
			MaxAge: EventRetention, Duplicates: DuplicateWindow, MaxMsgSize: MaxEnvelope, AllowDirect: true},
		{Name: StreamReports, Subjects: []string{subjects.AllReports}, Description: "edgectl reports, Mirage to user",
			MaxAge: ReportRetention, Duplicates: DuplicateWindow, MaxMsgSize: MaxEnvelope, MaxMsgsPerSubject: 64, AllowDirect: true},
	}
	for _, sc := range streams {
		sc.Storage = jetstream.FileStorage
		sc.Replicas = r
		sc.Retention = jetstream.LimitsPolicy
		sc.Discard = jetstream.DiscardOld
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("provision stream %s (replicas %d): %w", sc.Name, r, err)
		}
	}
	buckets := []jetstream.KeyValueConfig{
		{Bucket: BucketGhosts, Description: "edgectl fleet registry and presence, key = ghost_id", History: 1},
		{Bucket: BucketIntents, Description: "edgectl intent state, key = intent_id", History: 1, TTL: EventRetention},
		{Bucket: BucketFleet, Description: "edgectl enrolled Ghost identities, key = ghost_id, value = public nkey", History: 5},
	}
	for _, kc := range buckets {
		kc.Storage = jetstream.FileStorage
		kc.Replicas = r
		kc.MaxValueSize = MaxEnvelope
		if _, err := js.CreateOrUpdateKeyValue(ctx, kc); err != nil {
			return fmt.Errorf("provision KV bucket %s (replicas %d): %w", kc.Bucket, r, err)
		}
	}
	oc := jetstream.ObjectStoreConfig{Bucket: BucketSeeds, Description: "edgectl declarative seeds: specs and files, key = <seed id>/<version>/...",
		Storage: jetstream.FileStorage, Replicas: r}
	if _, err := js.CreateOrUpdateObjectStore(ctx, oc); err != nil {
		return fmt.Errorf("provision object store %s (replicas %d): %w", oc.Bucket, r, err)
	}
	return nil
}
