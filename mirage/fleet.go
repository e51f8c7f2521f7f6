package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Presence statuses of a registered Ghost.
const (
	StatusOnline  = "online"
	StatusStale   = "stale"
	StatusOffline = "offline"
)

// Presence thresholds: a Ghost is stale after StaleAfter without a heartbeat (the seed's
// session-dead time) and offline after OfflineAfter.
const (
	StaleAfter   = 15 * time.Second
	OfflineAfter = 60 * time.Second
)

// GhostRecord is a Ghost's entry in KV edge_ghosts (key = ghost_id).
type GhostRecord struct {
	GhostID      string            `json:"ghost_id"`
	Version      string            `json:"version"`
	Labels       map[string]string `json:"labels"`
	Seeds        []bus.SeedInfo    `json:"seeds"`
	RegisteredMS int64             `json:"registered_ms"`
	LastSeenMS   int64             `json:"last_seen_ms"`
}

// Status returns the presence status of the record at now, with the default thresholds.
func (r GhostRecord) Status(now time.Time) string {
	return r.StatusWith(now, Presence{})
}

// Presence sets the thresholds of presence statuses; zero values mean the defaults.
type Presence struct {
	StaleAfter, OfflineAfter time.Duration
}

// StatusWith returns the presence status of the record at now with thresholds p.
func (r GhostRecord) StatusWith(now time.Time, p Presence) string {
	if p.StaleAfter <= 0 {
		p.StaleAfter = StaleAfter
	}
	if p.OfflineAfter <= 0 {
		p.OfflineAfter = OfflineAfter
	}
	age := now.Sub(time.UnixMilli(r.LastSeenMS))
	switch {
	case age < p.StaleAfter:
		return StatusOnline
	case age < p.OfflineAfter:
		return StatusStale
	default:
		return StatusOffline
	}
}

// Seed returns the declaration of a hosted seed.
func (r GhostRecord) Seed(id string) (bus.SeedInfo, bool) {
	for _, s := range r.Seeds {
		if s.ID == id {
			return s, true
		}
	}
	return bus.SeedInfo{}, false
}

// Fleet is Mirage's registry of Ghosts: a cache of KV edge_ghosts, written through on
// register and flushed periodically with heartbeat times.
type Fleet struct {
	kv  jetstream.KeyValue
	log *slog.Logger
	now func() time.Time

	mu     sync.RWMutex
	ghosts map[string]*GhostRecord
	seen   map[string]bool // ghost ids with a heartbeat not yet flushed
}

func newFleet(kv jetstream.KeyValue, now func() time.Time, log *slog.Logger) *Fleet {
	return &Fleet{kv: kv, log: log, now: now, ghosts: map[string]*GhostRecord{}, seen: map[string]bool{}}
}

// load reads every record from KV: a Mirage restart forgets nothing.
func (f *Fleet) load(ctx context.Context) error {
	recs, err := ReadFleet(ctx, f.kv)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range recs {
		r := recs[i]
		f.ghosts[r.GhostID] = &r
	}
	return nil
}

// ReadFleet returns every record of KV edge_ghosts, sorted by ghost_id.
func ReadFleet(ctx context.Context, kv jetstream.KeyValue) ([]GhostRecord, error) {
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []GhostRecord
	for key := range lister.Keys() {
		e, err := kv.Get(ctx, key)
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				continue
			}
			return nil, err
		}
		var r GhostRecord
		if json.Unmarshal(e.Value(), &r) != nil || r.GhostID == "" {
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GhostID < out[j].GhostID })
	return out, nil
}

// Get returns a copy of a Ghost's record.
func (f *Fleet) Get(id string) (GhostRecord, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	r, ok := f.ghosts[id]
	if !ok {
		return GhostRecord{}, false
	}
	return *r, true
}

// All returns copies of every record, sorted by ghost_id.
func (f *Fleet) All() []GhostRecord {
	f.mu.RLock()
	out := make([]GhostRecord, 0, len(f.ghosts))
	for _, r := range f.ghosts {
		out = append(out, *r)
	}
	f.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].GhostID < out[j].GhostID })
	return out
}

// onRegister records a registration and answers register.ack.
func (f *Fleet) onRegister(msg *nats.Msg) {
	var reg bus.Register
	ack := bus.RegisterAck{Header: bus.NewHeader(bus.TypeRegisterAck, "", f.now()), Status: bus.RegisterAccepted}
	err := bus.Decode(msg.Data, &reg)
	subjectGhost, serr := subjects.GhostFrom(msg.Subject)
	switch {
	case err != nil:
		ack.Status, ack.Reason = bus.RegisterRejected, bus.AsError(err).Error()
		ack.GhostID = subjectGhost
	case serr != nil || reg.GhostID != subjectGhost:
		ack.Status, ack.Reason = bus.RegisterRejected, "ghost_id does not match the subject it was sent on"
		ack.GhostID = reg.GhostID
	default:
		ack.TraceID = reg.TraceID
		ack.GhostID = reg.GhostID
		now := f.now().UnixMilli()
		rec := &GhostRecord{GhostID: reg.GhostID, Version: reg.Version, Labels: reg.Labels, Seeds: reg.Seeds, RegisteredMS: now, LastSeenMS: now}
		if perr := f.put(rec); perr != nil {
			ack.Status, ack.Reason = bus.RegisterRejected, "registry store failed: "+perr.Error()
		} else {
			f.mu.Lock()
			f.ghosts[rec.GhostID] = rec
			delete(f.seen, rec.GhostID)
			f.mu.Unlock()
			f.log.Info("ghost registered", "direction", "in", "message_type", bus.TypeRegister, "peer", reg.GhostID, "trace_id", reg.TraceID, "seeds", len(reg.Seeds))
		}
	}
	if ack.GhostID == "" || subjects.ValidateGhostID(ack.GhostID) != nil {
		ack.GhostID = "unknown"
	}
	if ack.Status == bus.RegisterRejected {
		f.log.Warn("registration rejected", "direction", "in", "message_type", bus.TypeRegister, "subject", msg.Subject, "reason", ack.Reason)
	}
	if data, err := bus.Encode(&ack); err == nil && msg.Reply != "" {
		_ = msg.Respond(data)
	}
}

func (f *Fleet) put(rec *GhostRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = f.kv.Put(ctx, rec.GhostID, data)
	return err
}

// onHeartbeat notes a Ghost's presence; flush writes it to KV.
func (f *Fleet) onHeartbeat(msg *nats.Msg) {
	var hb bus.Heartbeat
	if err := bus.Decode(msg.Data, &hb); err != nil {
		f.log.Debug("refused a malformed heartbeat", "subject", msg.Subject, "err", err)
		return
	}
	if id, err := subjects.GhostFrom(msg.Subject); err != nil || id != hb.GhostID {
		return
	}
	f.mu.Lock()
	if r, ok := f.ghosts[hb.GhostID]; ok {
		r.LastSeenMS = f.now().UnixMilli()
		f.seen[hb.GhostID] = true
	}
	f.mu.Unlock()
}

// flush writes the presence noted since the last flush.
func (f *Fleet) flush() {
	f.mu.Lock()
	var recs []GhostRecord
	for id := range f.seen {
		if r, ok := f.ghosts[id]; ok {
			recs = append(recs, *r)
		}
	}
	f.seen = map[string]bool{}
	f.mu.Unlock()
	for i := range recs {
		if err := f.put(&recs[i]); err != nil {
			f.log.Warn("presence not stored", "peer", recs[i].GhostID, "err", err)
		}
	}
}

// forget removes a Ghost from the registry (on revocation).
func (f *Fleet) forget(ctx context.Context, id string) {
	f.mu.Lock()
	delete(f.ghosts, id)
	delete(f.seen, id)
	f.mu.Unlock()
	if err := f.kv.Delete(ctx, id); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		f.log.Warn("registry entry not removed", "peer", id, "err", err)
	}
}
