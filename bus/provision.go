package bus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
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
	// Replicas is 1 on an embedded server, 3 on a cluster (at most MaxReplicas).
	Replicas int
	// EventsMaxBytes caps the bytes EDGE_EVT holds: 0 is the default, DefaultEventsMaxBytes
	// or less to leave half the JetStream store to the rest (eventsStream), -1 no cap (only
	// the age limit), otherwise at least MinEventsMaxBytes.
	EventsMaxBytes int64
}

// EDGE_EVT is the one stream Ghosts write to, so its size is capped: a Ghost that floods
// its evt.<id> with large events of new ids rotates the oldest events out (every Ghost
// re-sends the events Mirage has not acknowledged) instead of filling the JetStream store
// until commands, reports and state can no longer be written fleet-wide. The other streams
// and buckets are written by Mirage only.
const (
	DefaultEventsMaxBytes int64 = 4 << 30
	MinEventsMaxBytes     int64 = 4 * MaxEnvelope
)

// ErrEventsMaxBytes is wrapped by EnsureAssets for a cap below MinEventsMaxBytes, and when
// the JetStream store cannot reserve EDGE_EVT's cap or has no room left after it.
var ErrEventsMaxBytes = errors.New("events max bytes")

func (c AssetConfig) eventsMaxBytes() (int64, error) {
	switch n := c.EventsMaxBytes; {
	case n == 0:
		return DefaultEventsMaxBytes, nil
	case n < 0:
		return -1, nil
	case n < MinEventsMaxBytes:
		return 0, fmt.Errorf("%w: %d bytes is below the %d the largest events need", ErrEventsMaxBytes, n, MinEventsMaxBytes)
	default:
		return n, nil
	}
}

// MaxReplicas is the most copies JetStream keeps of an asset.
const MaxReplicas = 5

// ErrReplicas is wrapped by EnsureAssets when the server or cluster cannot keep the asked
// number of copies; the message names the number asked and what the server offers.
var ErrReplicas = errors.New("replicas")

// EnsureAssets creates or updates the streams, KV buckets and object store edgectl uses. It is
// idempotent: running it against provisioned assets changes nothing, and a changed replica
// count scales the existing assets. A count the server cannot place fails with ErrReplicas
// before anything else is changed (EDGE_CMD is provisioned first).
func EnsureAssets(ctx context.Context, js jetstream.JetStream, cfg AssetConfig) error {
	r := cfg.Replicas
	if r <= 0 {
		r = 1
	}
	if r > MaxReplicas {
		return fmt.Errorf("%w: %d asked, but JetStream keeps at most %d copies of a stream", ErrReplicas, r, MaxReplicas)
	}
	evtBytes, err := cfg.eventsMaxBytes()
	if err != nil {
		return err
	}
	streams := []jetstream.StreamConfig{
		{Name: StreamCommands, Subjects: []string{subjects.AllCommands}, Description: "edgectl commands, Mirage to Ghost",
			MaxAge: CommandRetention, Duplicates: DuplicateWindow, MaxMsgSize: MaxEnvelope, AllowDirect: true},
		{Name: StreamEvents, Subjects: []string{subjects.AllEvents}, Description: "edgectl events, Ghost to Mirage",
			MaxAge: EventRetention, MaxBytes: evtBytes, Duplicates: DuplicateWindow, MaxMsgSize: MaxEnvelope, AllowDirect: true},
		{Name: StreamReports, Subjects: []string{subjects.AllReports}, Description: "edgectl reports, Mirage to user",
			MaxAge: ReportRetention, Duplicates: DuplicateWindow, MaxMsgSize: MaxEnvelope, MaxMsgsPerSubject: 64, AllowDirect: true},
	}
	evtCap := int64(0) // the cap EDGE_EVT has once provisioned, for the error of an asset made after it
	for _, sc := range streams {
		sc.Storage = jetstream.FileStorage
		sc.Replicas = r
		sc.Retention = jetstream.LimitsPolicy
		sc.Discard = jetstream.DiscardOld
		create := func() error {
			_, err := js.CreateOrUpdateStream(ctx, sc)
			return noRoomAfterEvents(sc.Name, evtCap, err)
		}
		if sc.Name == StreamEvents {
			ev := eventsStream{js: js, cfg: sc, chosen: cfg.EventsMaxBytes != 0}
			create = func() (err error) {
				evtCap, err = ev.ensure(ctx)
				return err
			}
		}
		if err := provision(ctx, js, "stream "+sc.Name, sc.Name, r, create); err != nil {
			return err
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
		if err := provision(ctx, js, "KV bucket "+kc.Bucket, "KV_"+kc.Bucket, r, func() error {
			_, err := js.CreateOrUpdateKeyValue(ctx, kc)
			return noRoomAfterEvents("KV_"+kc.Bucket, evtCap, err)
		}); err != nil {
			return err
		}
	}
	oc := jetstream.ObjectStoreConfig{Bucket: BucketSeeds, Description: "edgectl declarative seeds: specs and files, key = <seed id>/<version>/...",
		Storage: jetstream.FileStorage, Replicas: r}
	return provision(ctx, js, "object store "+oc.Bucket, "OBJ_"+oc.Bucket, r, func() error {
		_, err := js.CreateOrUpdateObjectStore(ctx, oc)
		return noRoomAfterEvents("OBJ_"+oc.Bucket, evtCap, err)
	})
}

// eventsStream provisions EDGE_EVT and fits its byte cap to the JetStream store.
//
// A stream's byte cap is reserved in the server's JetStream store (max_file_store, and an
// account's max_file limit if it has one): the server refuses a stream whose cap does not
// fit in what the other streams left unreserved, and a stream without a cap needs a byte
// of it. The store's size is not reported to a client (JetStream account info says -1, no
// limit, for an account without limits), so the default cap is fitted by asking the
// server to reserve it:
//
//   - EDGE_EVT being made gets the largest of 4 GiB, 2 GiB, 1 GiB, ... (not below
//     MinEventsMaxBytes) for which the store can reserve twice that, so that at least as
//     much as EDGE_EVT reserves stays for the other streams and buckets: the stream is
//     made with twice the cap, then lowered to it (it is empty, nothing is lost). On a
//     store of 4 GiB or 6 GiB it gets 2 GiB, on 8 GiB or more the full 4 GiB.
//   - EDGE_EVT that exists gets the default 4 GiB if its cap is above it, or if the store
//     can reserve twice 4 GiB for it; otherwise it keeps its cap: it is never lowered to
//     fit (its oldest events would go, unread perhaps), nor raised past half the store.
//   - A cap the operator chose (AssetConfig.EventsMaxBytes) is applied as it is, and
//     refused with ErrEventsMaxBytes when the store cannot reserve it, or when it leaves
//     no room for the assets made after it (noRoomAfterEvents).
//
// While EDGE_EVT holds twice its cap, its metadata says so (metaFitting), until the update
// that lowers the cap removes it: provisioning stopped in between (the process killed, its
// deadline reached) leaves a stream the next provisioning fits as one being made, rather
// than keep a cap that takes the whole store for one chosen before.

// metaFitting is the EDGE_EVT metadata key set while the stream holds twice the default
// cap being fitted (its value).
const metaFitting = "edgectl_events_cap_fitting"

type eventsStream struct {
	js     jetstream.JetStream
	cfg    jetstream.StreamConfig
	chosen bool // the operator chose the cap (or no cap)
	// looked is set once the stream was looked up: existed and kept (its cap) stay as they
	// were found before this provisioning changed anything, across provision's retries.
	looked, existed bool
	kept            int64
}

// ensure creates or updates EDGE_EVT and returns the cap it was given.
func (e *eventsStream) ensure(ctx context.Context) (int64, error) {
	sc := e.cfg
	if e.chosen {
		if _, err := e.js.CreateOrUpdateStream(ctx, sc); err != nil {
			if storeTooSmall(err) {
				return 0, fmt.Errorf("%w: the JetStream store cannot reserve %d MiB for EDGE_EVT (%v): lower the cap (events_max_mb) or give JetStream more storage", ErrEventsMaxBytes, sc.MaxBytes>>20, err)
			}
			return 0, err
		}
		return sc.MaxBytes, nil
	}
	if !e.looked {
		s, err := e.js.Stream(ctx, sc.Name)
		switch {
		case err == nil:
			// One left holding twice its cap (metaFitting) is fitted as one being made.
			if _, fitting := s.CachedInfo().Config.Metadata[metaFitting]; !fitting {
				e.existed, e.kept = true, s.CachedInfo().Config.MaxBytes
			}
		case !errors.Is(err, jetstream.ErrStreamNotFound):
			return 0, err
		}
		e.looked = true
	}
	if e.existed && e.kept >= DefaultEventsMaxBytes {
		// Lowered to the default: the store has reserved more already.
		sc.MaxBytes = DefaultEventsMaxBytes
		_, err := e.js.CreateOrUpdateStream(ctx, sc)
		return sc.MaxBytes, err
	}
	for c := DefaultEventsMaxBytes; ; c /= 2 {
		twice := sc
		twice.MaxBytes = 2 * c
		twice.Metadata = maps.Clone(sc.Metadata)
		if twice.Metadata == nil {
			twice.Metadata = map[string]string{}
		}
		twice.Metadata[metaFitting] = strconv.FormatInt(c, 10)
		_, err := e.js.CreateOrUpdateStream(ctx, twice)
		switch {
		case err == nil:
			sc.MaxBytes = c // and no metaFitting
			_, err = e.js.CreateOrUpdateStream(ctx, sc)
			return c, err
		case !storeTooSmall(err):
			return 0, err
		case e.existed:
			sc.MaxBytes = e.kept
			_, err = e.js.CreateOrUpdateStream(ctx, sc)
			return e.kept, err
		case c/2 < MinEventsMaxBytes:
			return 0, fmt.Errorf("%w: the JetStream store cannot reserve %d MiB for EDGE_EVT and as much again for the other streams (%v): give JetStream more storage, or set the cap (events_max_mb)", ErrEventsMaxBytes, c>>20, err)
		}
	}
}

// noRoomAfterEvents turns the refusal of an asset made after EDGE_EVT for want of store
// into a line that says what to change, when EDGE_EVT's cap holds the store.
func noRoomAfterEvents(stream string, evtCap int64, err error) error {
	if !storeTooSmall(err) || evtCap <= 0 {
		return err
	}
	return fmt.Errorf("%w: the JetStream store has no room left for %s (%v): EDGE_EVT reserves %d MiB of it; lower the cap (events_max_mb) or give JetStream more storage", ErrEventsMaxBytes, stream, err, evtCap>>20)
}

// provisionPatience is how long provisioning waits for a JetStream cluster that has no
// meta leader yet (its servers were started together with Mirage).
const provisionPatience = 30 * time.Second

// Server error codes that provisioning translates (nats-server's jetstream_errors.json).
const (
	errCodeNoPeers            jetstream.ErrorCode = 10005 // no suitable peers for placement
	errCodeClusterUnavailable jetstream.ErrorCode = 10008 // JetStream system temporarily unavailable
	errCodeInsufficient       jetstream.ErrorCode = 10023 // insufficient resources
	errCodeReplicasStandalone jetstream.ErrorCode = 10074 // replicas > 1 not supported in non-clustered mode
	errCodeStorageExceeded    jetstream.ErrorCode = 10047 // insufficient storage resources available
)

// storeTooSmall reports whether the server could not reserve a stream's byte cap: a
// single server says so with its own code, a cluster names the reason of a refused
// placement.
func storeTooSmall(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == errCodeStorageExceeded ||
		apiErr.ErrorCode == errCodeNoPeers && strings.Contains(apiErr.Description, "insufficient storage"))
}

// provision runs one create-or-update, retrying while a cluster forms or elects its meta
// leader (for at most provisionPatience), and turns the server's placement errors into one
// line that says what to change. With replicas it then waits for the copies (waitPlaced).
func provision(ctx context.Context, js jetstream.JetStream, what, stream string, replicas int, create func() error) error {
	deadline := time.Now().Add(provisionPatience)
	for {
		err := create()
		var apiErr *jetstream.APIError
		switch {
		case err == nil && replicas > 1:
			return waitPlaced(ctx, js, what, stream, replicas, deadline)
		case err == nil:
			return nil
		case errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeReplicasStandalone:
			return fmt.Errorf("%w: %d asked for %s, but the NATS server is not clustered and keeps 1 copy: set replicas to 1, or run against a JetStream cluster of at least %d servers", ErrReplicas, replicas, what, replicas)
		case errors.As(err, &apiErr) && (apiErr.ErrorCode == errCodeNoPeers || apiErr.ErrorCode == errCodeInsufficient) && replicas > 1:
			return fmt.Errorf("%w: %d asked for %s, but %s cannot place %d copies (%s): it has fewer than %d JetStream servers online with room; start the missing servers, or set replicas to at most the number of servers that are up", ErrReplicas, replicas, what, clusterName(js), replicas, apiErr.Description, replicas)
		case retryable(err) && time.Now().Before(deadline) && ctx.Err() == nil:
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		return fmt.Errorf("provision %s (replicas %d): %w", what, replicas, err)
	}
}

// waitPlaced waits until stream has its leader, all its peers placed, and a majority of
// them current: a stream just scaled up refuses new consumers until then. It does not wait
// for every peer, so that Mirage starts while one server of the cluster is down.
func waitPlaced(ctx context.Context, js jetstream.JetStream, what, stream string, replicas int, deadline time.Time) error {
	var seen string
	for {
		s, err := js.Stream(ctx, stream)
		if err == nil {
			var info *jetstream.StreamInfo
			if info, err = s.Info(ctx); err == nil && info.Cluster != nil {
				current := 1 // the leader
				for _, p := range info.Cluster.Replicas {
					if p.Current && !p.Offline {
						current++
					}
				}
				peers := 1 + len(info.Cluster.Replicas)
				if info.Cluster.Leader != "" && peers >= replicas && current > replicas/2 {
					return nil
				}
				seen = fmt.Sprintf("leader %q, %d of %d peers placed, %d current", info.Cluster.Leader, peers, replicas, current)
			}
		}
		if err != nil {
			seen = err.Error()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%w: %s was not placed on %d servers within %s (%s)", ErrReplicas, what, replicas, provisionPatience, seen)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// retryable errors are those of a cluster that is still forming or electing a leader.
func retryable(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == errCodeClusterUnavailable
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders)
}

func clusterName(js jetstream.JetStream) string {
	if name := js.Conn().ConnectedClusterName(); name != "" {
		return fmt.Sprintf("the JetStream cluster %q", name)
	}
	return "the JetStream cluster"
}
