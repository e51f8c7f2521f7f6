package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"strings"
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

// DefaultPresenceFlush is how often Mirage writes heartbeat times to KV edge_ghosts by
// default (Config.PresenceFlush): what a reader of KV sees may be that much behind.
const DefaultPresenceFlush = 5 * time.Second

// GhostRecord is a Ghost's entry in KV edge_ghosts (key = ghost_id).
type GhostRecord struct {
	GhostID      string            `json:"ghost_id"`
	Version      string            `json:"version"`
	Labels       map[string]string `json:"labels"`
	Seeds        []bus.SeedInfo    `json:"seeds"`
	RegisteredMS int64             `json:"registered_ms"`
	LastSeenMS   int64             `json:"last_seen_ms"`
	// LeftMS is when the Ghost said it was stopping (a heartbeat with leaving set): it is
	// offline from then until it is heard from again, a heartbeat or a registration
	// after it (LastSeenMS > LeftMS).
	LeftMS int64 `json:"left_ms,omitempty"`
	// ClockOffsetMS is the Ghost's clock minus Mirage's when it registered: its register's
	// timestamp_ms less the time Mirage received it (a few ms of transit read as behind).
	ClockOffsetMS int64 `json:"clock_offset_ms,omitempty"`
}

// Status returns the presence status of the record at now, with the default thresholds.
func (r GhostRecord) Status(now time.Time) string {
	return r.StatusWith(now, Presence{})
}

// Presence sets the thresholds of presence statuses; zero values mean the defaults.
// Flush is how far behind Mirage's view the heartbeat times read from KV may be (its
// Config.PresenceFlush; default DefaultPresenceFlush): used by Client.Ghosts.
type Presence struct {
	StaleAfter, OfflineAfter, Flush time.Duration
}

// StatusWith returns the presence status of the record at now with thresholds p.
func (r GhostRecord) StatusWith(now time.Time, p Presence) string {
	if p.StaleAfter <= 0 {
		p.StaleAfter = StaleAfter
	}
	if p.OfflineAfter <= 0 {
		p.OfflineAfter = OfflineAfter
	}
	if r.Left() {
		return StatusOffline
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

// Left reports whether the Ghost said it was stopping and has not been heard from since.
func (r GhostRecord) Left() bool { return r.LeftMS > 0 && r.LeftMS >= r.LastSeenMS }

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
// register, with heartbeat times flushed periodically into the presence shards.
type Fleet struct {
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	stop    chan struct{}
	pending chan string // ids of queued registrations, in arrival order
	guard   *replyGuard // whether a register may be answered on its reply subject
	// enrolled says whether a ghost id is enrolled, when Mirage enforces enrollment
	// (Config.RequireSignedEvents); nil lets any id register.
	enrolled func(ghostID string) bool
	log      *slog.Logger
	// rejected bounds the warnings about rejected registrations: a peer repeating a
	// malformed register must not flood the log.
	rejected bus.RateLog

	// queued holds each Ghost's latest registration not yet stored: one per Ghost, so a
	// Ghost repeating its register cannot fill Mirage's memory. gen counts the Ghosts
	// forgotten (revoked), forgotten holds the gen of each one's latest: a registration
	// queued before its Ghost was forgotten is not stored after it.
	qmu       sync.Mutex
	queued    map[string]registration
	gen       uint64
	forgotten map[string]uint64
	now       func() time.Time

	mu     sync.RWMutex
	ghosts map[string]*GhostRecord
	seen   map[uint32]bool // presence shards with a heartbeat not yet flushed
	// leaving holds the Ghosts that said they stop, whose records are not stored yet
	// (storeLeft); left is kicked when one is added.
	leaving map[string]bool
	left    chan struct{}
}

func newFleet(js jetstream.JetStream, kv jetstream.KeyValue, stop chan struct{}, now func() time.Time, guard *replyGuard, log *slog.Logger) *Fleet {
	return &Fleet{js: js, kv: kv, stop: stop, pending: make(chan string, 4096), queued: map[string]registration{}, guard: guard, log: log, now: now, ghosts: map[string]*GhostRecord{}, seen: map[uint32]bool{},
		leaving: map[string]bool{}, left: make(chan struct{}, 1)}
}

// load reads every record from KV: a Mirage restart forgets nothing. A record stored
// under another Ghost's key is not loaded (readFleet).
func (f *Fleet) load(ctx context.Context) error {
	recs, misfiled, err := readFleet(ctx, f.js, rateLimited(f.log.Warn))
	if err != nil {
		return err
	}
	if len(misfiled) > 0 {
		f.log.Warn("registry records whose ghost_id is not their key were skipped", "bucket", bus.BucketGhosts,
			"records", len(misfiled), "keys", misfiled[:min(len(misfiled), 10)])
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range recs {
		r := recs[i]
		f.ghosts[r.GhostID] = &r
	}
	return nil
}

// Presence is kept apart from the records: the last heartbeat time of every Ghost lives
// in one of presenceShards keys "_presence.NN" of edge_ghosts (a key no ghost id can
// be: ids start with a letter or digit), each a JSON object ghost_id → last_seen_ms.
// A flush writes the shards its heartbeats touched, not every record: a fleet of 10,000
// Ghosts beating every 5 s costs 64 stored writes per flush rather than 10,000. A
// record's own last_seen_ms is the time it was last written (registration).
const (
	presenceShards = 64
	presencePrefix = "_presence."
)

func presenceKey(shard uint32) string { return fmt.Sprintf("%s%02d", presencePrefix, shard) }

func presenceShard(ghostID string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(ghostID))
	return h.Sum32() % presenceShards
}

// ReadFleet returns every record of KV edge_ghosts, sorted by ghost_id, with the last
// heartbeat times of the presence shards. A record whose ghost_id is not its key is
// skipped (readFleet).
func ReadFleet(ctx context.Context, js jetstream.JetStream) ([]GhostRecord, error) {
	recs, _, err := readFleet(ctx, js, func(string, ...any) {})
	return recs, err
}

// readFleet is ReadFleet, also returning the keys of the records it skipped because their
// ghost_id is not their key: Mirage writes a record under its own id only, but JetStream
// publishes its API answers on whatever reply subject a request names, which the server
// does not check against the requester's permissions, so a Ghost can have an answer
// carrying its ghost_id stored under another Ghost's key. Keys and values are read as
// stored (kvKeys, kvLatest): a value that reads as a status (anyone who may publish on a
// key's subject can store one) is junk, skipped as other junk is; warn says so for a
// listing that had to pass over such messages.
func readFleet(ctx context.Context, js jetstream.JetStream, warn func(string, ...any)) ([]GhostRecord, []string, error) {
	keys, err := kvKeys(ctx, js, bus.BucketGhosts, warn)
	if err != nil {
		return nil, nil, err
	}
	var misfiled []string
	var out []GhostRecord
	seen := map[string]int64{}
	for _, k := range keys {
		key := k.key
		// Not less recent than the listing: on a cluster a direct get may come from a
		// replica behind it, which has the key's older record or none (kvLatest).
		e, err := kvLatest(ctx, js.Conn(), bus.BucketGhosts, key, k.seq)
		switch {
		case err != nil:
			return nil, nil, err
		case e == nil:
			continue // deleted since it was listed (the stream's leader says so)
		}
		if strings.HasPrefix(key, presencePrefix) {
			var shard map[string]int64
			if json.Unmarshal(e.data, &shard) == nil {
				for id, ms := range shard {
					seen[id] = max(seen[id], ms)
				}
			}
			continue
		}
		var r GhostRecord
		if json.Unmarshal(e.data, &r) != nil || r.GhostID == "" {
			continue
		}
		if r.GhostID != key {
			misfiled = append(misfiled, key)
			continue
		}
		out = append(out, r)
	}
	for i := range out {
		out[i].LastSeenMS = max(out[i].LastSeenMS, seen[out[i].GhostID])
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GhostID < out[j].GhostID })
	return out, misfiled, nil
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

// onRegister checks a registration and queues it for the registrar, which stores it and
// answers register.ack. A register that may not be answered on its reply subject
// (replyGuard) is dropped: no Ghost is registered whose request cannot be answered.
// When Mirage enforces enrollment, a register from an id that is not enrolled (never, or
// revoked) is rejected and nothing is stored: a server whose auth config predates a
// 'fleet rm' (a cluster node not reloaded yet), or an auth config that admits a key
// edge_fleet does not hold, still lets such a Ghost connect, and its record would show it
// online though no issue may target it.
func (f *Fleet) onRegister(msg *nats.Msg) {
	subjectGhost, serr := subjects.GhostFrom(msg.Subject)
	if !f.guard.allows(subjectGhost, msg.Subject, msg.Reply) {
		return
	}
	var reg bus.Register
	ack := bus.RegisterAck{Header: bus.NewHeader(bus.TypeRegisterAck, "", f.now()), Status: bus.RegisterAccepted}
	err := bus.Decode(msg.Data, &reg)
	switch {
	case err != nil:
		ack.Status, ack.Reason = bus.RegisterRejected, bus.AsError(err).Error()
		ack.GhostID = subjectGhost
	case serr != nil || reg.GhostID != subjectGhost:
		ack.Status, ack.Reason = bus.RegisterRejected, bus.FieldError(bus.CodeSemantic, "ghost_id", "does not match the subject it was sent on").Error()
		ack.GhostID = reg.GhostID
	default:
		ack.TraceID = reg.TraceID
		ack.GhostID = reg.GhostID
		now := f.now().UnixMilli()
		rec := &GhostRecord{GhostID: reg.GhostID, Version: reg.Version, Labels: reg.Labels, Seeds: reg.Seeds, RegisteredMS: now, LastSeenMS: now,
			ClockOffsetMS: reg.TimestampMS - now}
		reg := registration{rec: rec, msg: msg, ack: ack}
		f.qmu.Lock()
		// Checked under qmu: a revocation removes the enrollment before it forgets the
		// Ghost (forget takes qmu), so a register that passes here is queued before that
		// forget, which then rejects it (or keep does, by its gen).
		if f.enrolled != nil && !f.enrolled(rec.GhostID) {
			f.qmu.Unlock()
			ack.Status, ack.Reason = bus.RegisterRejected, notEnrolled(rec.GhostID).Error()
			break
		}
		reg.gen = f.gen
		old, waiting := f.queued[rec.GhostID]
		if waiting {
			// The newer register replaces the older, whose request is answered with the
			// newer one's outcome (a Ghost may still wait for it); a few are kept.
			reg.earlier = append(old.earlier, old.msg)
			if len(reg.earlier) > maxEarlier {
				reg.earlier = reg.earlier[len(reg.earlier)-maxEarlier:]
			}
		}
		f.queued[rec.GhostID] = reg
		f.qmu.Unlock()
		// Of a register Mirage takes only: a rejected one is warned about, rate-limited,
		// in answer (a revoked Ghost retries at every heartbeat tick).
		f.checkClock(rec.GhostID, rec.ClockOffsetMS, bus.TypeRegister)
		if waiting {
			return // its id is queued already
		}
		select {
		case f.pending <- rec.GhostID:
			return
		case <-f.stop:
			return // Mirage stops: the Ghost registers again with the next one
		}
	}
	f.answer(msg, ack)
}

// notEnrolled is the reason a register from an id that is not enrolled is rejected.
func notEnrolled(ghostID string) *bus.Error {
	return bus.Errorf(bus.CodeSecurity, "ghost %s is not enrolled (never, or revoked by 'fleet rm'): run 'miragectl fleet add %s KEY' with the key 'ghostctl init' printed for it", ghostID, ghostID)
}

type registration struct {
	rec *GhostRecord
	msg *nats.Msg
	ack bus.RegisterAck
	gen uint64 // Fleet.gen when it was queued
	// earlier are the requests of registers this one replaced: answered with its outcome.
	earlier []*nats.Msg
}

// maxEarlier bounds the replaced requests kept per Ghost (older ones go unanswered and
// time out at the Ghost, which retries).
const maxEarlier = 4

func (f *Fleet) answer(msg *nats.Msg, ack bus.RegisterAck) {
	if ack.GhostID == "" || subjects.ValidateGhostID(ack.GhostID) != nil {
		ack.GhostID = "unknown"
	}
	if ack.Status == bus.RegisterRejected {
		if ok, n := f.rejected.Allow(); ok {
			f.log.Warn("registration rejected", "direction", "in", "message_type", bus.TypeRegister, "subject", msg.Subject, "reason", ack.Reason, "rejections", n)
		}
	}
	if data, err := bus.Encode(&ack); err == nil && msg.Reply != "" {
		_ = msg.Respond(data)
	}
}

// registrar stores queued registrations in batches: every record of a batch is in flight
// to KV edge_ghosts at once, and each Ghost is answered when its record is stored. A
// fleet of thousands registers in a few round trips, not one fsync after another.
func (f *Fleet) registrar() {
	const batchMax = 1024
	for {
		var batch []registration
		take := func(id string) {
			f.qmu.Lock()
			r, ok := f.queued[id]
			delete(f.queued, id)
			f.qmu.Unlock()
			if ok {
				batch = append(batch, r)
			}
		}
		select {
		case id := <-f.pending:
			take(id)
		case <-f.stop:
			return
		}
	fill:
		for len(batch) < batchMax {
			select {
			case id := <-f.pending:
				take(id)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			continue
		}
		recs := make([]*GhostRecord, len(batch))
		for i, r := range batch {
			recs[i] = r.rec
		}
		errs := f.putAll(recs)
		for i, r := range batch {
			switch {
			case errs[i] != nil:
				r.ack.Status, r.ack.Reason = bus.RegisterRejected, bus.Errorf(bus.CodeInternal, "registry store failed: %v", errs[i]).Error()
			case !f.keep(r):
				// Revoked while its record was being stored: the record goes again.
				r.ack.Status, r.ack.Reason = bus.RegisterRejected, bus.Errorf(bus.CodeSecurity, "ghost revoked while registering").Error()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if err := f.kv.Delete(ctx, r.rec.GhostID); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
					f.log.Warn("registry entry of a revoked ghost not removed", "peer", r.rec.GhostID, "err", err)
				}
				cancel()
			default:
				f.log.Info("ghost registered", "direction", "in", "message_type", bus.TypeRegister, "peer", r.rec.GhostID, "trace_id", r.ack.TraceID, "seeds", len(r.rec.Seeds))
			}
			f.answer(r.msg, r.ack)
			for _, m := range r.earlier {
				f.answer(m, r.ack)
			}
		}
	}
}

// putAll writes records to KV edge_ghosts, all in flight at once; it returns one error
// (or nil) per record.
func (f *Fleet) putAll(recs []*GhostRecord) []error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return f.putAllCtx(ctx, recs)
}

// putAllCtx is putAll with its deadline: every acknowledgement still missing when ctx
// ends fails then.
func (f *Fleet) putAllCtx(ctx context.Context, recs []*GhostRecord) []error {
	errs := make([]error, len(recs))
	futures := make([]jetstream.PubAckFuture, len(recs))
	for i, rec := range recs {
		data, err := json.Marshal(rec)
		if err != nil {
			errs[i] = err
			continue
		}
		futures[i], errs[i] = f.js.PublishAsync("$KV."+bus.BucketGhosts+"."+rec.GhostID, data)
	}
	for i, fut := range futures {
		if fut == nil {
			continue
		}
		select {
		case <-fut.Ok():
		case err := <-fut.Err():
			errs[i] = err
		case <-ctx.Done():
			errs[i] = errors.New("no acknowledgement from JetStream in time (10 s, or the stop budget)")
		}
	}
	return errs
}

// keep adds a stored registration's record to the registry, unless its Ghost was
// forgotten since the registration was queued; it says which.
func (f *Fleet) keep(r registration) bool {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	if f.forgotten[r.rec.GhostID] > r.gen {
		return false
	}
	f.mu.Lock()
	f.ghosts[r.rec.GhostID] = r.rec
	f.mu.Unlock()
	return true
}

func (f *Fleet) put(rec *GhostRecord) error {
	return f.putAll([]*GhostRecord{rec})[0]
}

// onHeartbeat notes a Ghost's presence; flush writes it to its presence shard. A
// heartbeat with leaving set (a Ghost that stops) marks it offline at once: its record is
// stored with left_ms soon after (storeLeft), for the readers of edge_ghosts.
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
	r, ok := f.ghosts[hb.GhostID]
	if ok {
		now := f.now().UnixMilli()
		switch {
		case hb.Leaving:
			r.LastSeenMS = max(now, r.LastSeenMS)
			r.LeftMS = r.LastSeenMS
			f.leaving[hb.GhostID] = true
		case r.LeftMS > 0:
			// Back after it left: heard from later than it left, even within its
			// millisecond.
			r.LastSeenMS = max(now, r.LeftMS+1)
		default:
			r.LastSeenMS = now
		}
		f.seen[presenceShard(hb.GhostID)] = true
		// A clock stepped since the registration: noted in memory (Fleet.Get) and
		// warned about once per step; the record in KV keeps the registration's.
		if off := hb.TimestampMS - now; (off-r.ClockOffsetMS) > bus.ClockWarnAt.Milliseconds() || (r.ClockOffsetMS-off) > bus.ClockWarnAt.Milliseconds() {
			r.ClockOffsetMS = off
			defer f.checkClock(hb.GhostID, off, bus.TypeHeartbeat)
		}
	}
	f.mu.Unlock()
	if ok && hb.Leaving {
		f.log.Info("ghost stopping: offline until it is heard from again", "direction", "in", "message_type", bus.TypeHeartbeat, "peer", hb.GhostID)
		select {
		case f.left <- struct{}{}:
		default: // a store is asked for already
		}
	}
}

// storeLeft writes the records of the Ghosts that said they stop, with their left_ms, to
// KV edge_ghosts: 'miragectl ghosts' and a restarted Mirage see them offline at once, not
// after OfflineAfter. A record not stored is written again at the next kick. A Ghost back
// meanwhile (heard from after it left) needs no write: the presence shards carry its later
// heartbeat, which outweighs left_ms.
func (f *Fleet) storeLeft(ctx context.Context) {
	f.mu.Lock()
	var recs []*GhostRecord
	for id := range f.leaving {
		if r, ok := f.ghosts[id]; ok && r.Left() {
			c := *r
			recs = append(recs, &c)
		}
	}
	f.leaving = map[string]bool{}
	f.mu.Unlock()
	if len(recs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for i, err := range f.putAllCtx(ctx, recs) {
		if err == nil {
			continue
		}
		f.log.Warn("record of a stopping ghost not stored; Mirage shows it offline, edge_ghosts after the next try", "peer", recs[i].GhostID, "err", err)
		f.mu.Lock()
		f.leaving[recs[i].GhostID] = true
		f.mu.Unlock()
	}
}

// flush writes the presence shards that heartbeats touched since the last flush, each
// with the last heartbeat time of every Ghost it holds. It waits for the store's answers
// for at most 10 s, and not past ctx (Mirage's stop budget).
func (f *Fleet) flush(ctx context.Context) {
	f.mu.Lock()
	touched := f.seen
	f.seen = map[uint32]bool{}
	shards := map[uint32]map[string]int64{}
	for id, r := range f.ghosts {
		if sh := presenceShard(id); touched[sh] {
			if shards[sh] == nil {
				shards[sh] = map[string]int64{}
			}
			shards[sh][id] = r.LastSeenMS
		}
	}
	f.mu.Unlock()
	// A shard not stored is written again at the next flush.
	var unstored []uint32
	futures := make(map[uint32]jetstream.PubAckFuture, len(shards))
	for sh, m := range shards {
		data, err := json.Marshal(m)
		if err == nil {
			var fut jetstream.PubAckFuture
			if fut, err = f.js.PublishAsync("$KV."+bus.BucketGhosts+"."+presenceKey(sh), data); err == nil {
				futures[sh] = fut
			}
		}
		if err != nil {
			f.log.Warn("presence not stored", "shard", presenceKey(sh), "err", err)
			unstored = append(unstored, sh)
		}
	}
	// One deadline for all the answers (a timer channel would fire for the first only).
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for sh, fut := range futures {
		select {
		case <-fut.Ok():
			continue
		case err := <-fut.Err():
			f.log.Warn("presence not stored", "shard", presenceKey(sh), "err", err)
		case <-ctx.Done():
			f.log.Warn("presence not stored", "shard", presenceKey(sh), "err", "no acknowledgement from JetStream in time (10 s, or the stop budget)")
		}
		unstored = append(unstored, sh)
	}
	if len(unstored) > 0 {
		f.mu.Lock()
		for _, sh := range unstored {
			f.seen[sh] = true
		}
		f.mu.Unlock()
	}
}

// forget removes a Ghost from the registry (on revocation).
func (f *Fleet) forget(ctx context.Context, id string) {
	f.qmu.Lock()
	f.gen++
	if f.forgotten == nil {
		f.forgotten = map[string]uint64{}
	}
	f.forgotten[id] = f.gen
	queued, waiting := f.queued[id]
	delete(f.queued, id)
	f.mu.Lock()
	delete(f.ghosts, id)
	f.mu.Unlock()
	f.qmu.Unlock()
	if waiting {
		// Not stored: its requests are answered now (the registrar finds nothing queued).
		queued.ack.Status, queued.ack.Reason = bus.RegisterRejected, "ghost revoked while registering"
		f.answer(queued.msg, queued.ack)
		for _, m := range queued.earlier {
			f.answer(m, queued.ack)
		}
	}
	if err := f.kv.Delete(ctx, id); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		f.log.Warn("registry entry not removed", "peer", id, "err", err)
	}
}

// checkClock warns when a Ghost's clock, as its register or heartbeat shows it
// (timestamp_ms against Mirage's clock on arrival), is more than bus.ClockWarnAt off
// Mirage's. The Ghost judges deliver_by_ms on Mirage's clock as it learns it at
// registration, so commands are not refused or run late for it; but its events' times,
// logs and a signed command's freshness window are on its own clock.
func (f *Fleet) checkClock(ghostID string, offsetMS int64, from string) {
	if time.Duration(max(offsetMS, -offsetMS))*time.Millisecond <= bus.ClockWarnAt {
		return
	}
	f.log.Warn("ghost's clock is far off Mirage's; synchronise its clock (NTP)", "peer", ghostID, "clock_offset_ms", offsetMS, "message_type", from)
}
