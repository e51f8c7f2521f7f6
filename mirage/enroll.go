package mirage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Reserved keys of KV edge_fleet (ghost ids cannot start with "_").
const (
	FleetKeyMirage   = "_mirage"
	FleetKeyOperator = "_operator"
)

// Enrollment binds a ghost id to its public nkey, in KV edge_fleet.
type Enrollment struct {
	GhostID    string `json:"ghost_id"`
	PublicKey  string `json:"public_key"`
	EnrolledMS int64  `json:"enrolled_ms"`
}

// FleetRequest is an operator's request on mirage.fleet.add / mirage.fleet.rm.
type FleetRequest struct {
	GhostID   string `json:"ghost_id"`
	PublicKey string `json:"public_key,omitempty"`
}

// FleetReply answers a fleet request.
type FleetReply struct {
	Status string       `json:"status"` // accepted | rejected
	Error  *bus.Error   `json:"error,omitempty"`
	Fleet  []Enrollment `json:"fleet,omitempty"`
}

// enrollments caches KV edge_fleet: which public key each ghost id is bound to.
type enrollments struct {
	js jetstream.JetStream
	kv jetstream.KeyValue

	mu    sync.RWMutex
	byID  map[string]Enrollment
	roles map[string]string // reserved keys → public key
}

func newEnrollments(js jetstream.JetStream, kv jetstream.KeyValue) *enrollments {
	return &enrollments{js: js, kv: kv, byID: map[string]Enrollment{}, roles: map[string]string{}}
}

// ReadEnrollments returns every valid enrollment of KV edge_fleet and the reserved role
// keys. Anyone who may send a JetStream API request can have its answer stored on any
// subject, edge_fleet's included (nats-server does not check a reply subject against the
// requester's permissions): a key's latest value may be junk. So each key is read through
// validEnrollment, which falls back to the newest valid revision of the key's history and
// skips (logging a warning naming the key, not the value) a key that has none. Only a
// store that does not answer is an error. Keys, values and histories are read as stored
// (kvKeys, kvLatest, kvHistory): a value that reads as a status (an empty body with a
// Status header, which jetstream's reads took for the server's answer) is junk as any
// other, and a listing or history passes over such messages.
func ReadEnrollments(ctx context.Context, js jetstream.JetStream, log *slog.Logger) ([]Enrollment, map[string]string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	passed := rateLimited(log.Warn)
	keys, err := kvKeys(ctx, js, bus.BucketFleet, passed)
	if err != nil {
		return nil, nil, err
	}
	var out []Enrollment
	roles := map[string]string{}
	for _, k := range keys {
		key := k.key
		en, ok, err := validEnrollment(ctx, js, key, k.seq, log, passed)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case !ok:
		case isRoleKey(key):
			roles[key] = en.PublicKey
		default:
			out = append(out, en)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GhostID < out[j].GhostID })
	return out, roles, nil
}

func isRoleKey(key string) bool { return key == FleetKeyMirage || key == FleetKeyOperator }

// checkEnrollment says why a value stored under key is not a valid enrollment, or nil: it
// must decode, name its key (a valid ghost id, or a role key), and hold a public user nkey.
func checkEnrollment(key string, value []byte) (Enrollment, error) {
	var en Enrollment
	if err := json.Unmarshal(value, &en); err != nil {
		return en, errors.New("not an enrollment (does not decode)")
	}
	if en.GhostID != key {
		return en, errors.New("its ghost_id is not its key")
	}
	if !isRoleKey(key) {
		if err := subjects.ValidateGhostID(key); err != nil {
			return en, fmt.Errorf("the key is not a ghost id: %s", subjects.Reason(err))
		}
	}
	if !nkeys.IsValidPublicUserKey(en.PublicKey) {
		return en, errors.New("its public_key is not a public user nkey")
	}
	return en, nil
}

// validEnrollment returns the enrollment stored under key: its latest value when valid,
// else the newest valid revision since the key was last deleted (a revoked Ghost stays
// revoked). ok is false when there is none. listed is the sequence of the key's last
// message in the listing that found it (kvLatest: no older one is taken for the latest).
func validEnrollment(ctx context.Context, js jetstream.JetStream, key string, listed uint64, log *slog.Logger, passed func(string, ...any)) (Enrollment, bool, error) {
	e, err := kvLatest(ctx, js.Conn(), bus.BucketFleet, key, listed)
	switch {
	case err != nil:
		return Enrollment{}, false, err
	case e == nil:
		return Enrollment{}, false, nil
	}
	en, bad := checkEnrollment(key, e.data)
	if bad == nil {
		return en, true, nil
	}
	hist, err := kvHistory(ctx, js, bus.BucketFleet, key, passed)
	if err != nil {
		return Enrollment{}, false, err
	}
	for i := len(hist) - 1; i >= 0; i-- {
		h := hist[i]
		if kvDeleted(h.header) {
			break // deleted or purged: what came before is revoked
		}
		if en, err := checkEnrollment(key, h.data); err == nil {
			log.Warn("edge_fleet: the latest value of a key is not a valid enrollment; using its newest valid revision",
				"key", key, "reason", bad.Error(), "revision", e.seq, "used_revision", h.seq)
			return en, true, nil
		}
	}
	log.Warn("edge_fleet: a key holds no valid enrollment; skipped", "key", key, "reason", bad.Error(), "revision", e.seq)
	return Enrollment{}, false, nil
}

func (e *enrollments) load(ctx context.Context, log *slog.Logger) error {
	list, roles, err := ReadEnrollments(ctx, e.js, log)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, en := range list {
		e.byID[en.GhostID] = en
	}
	e.roles = roles
	return nil
}

// key returns the public key enrolled for a ghost id.
func (e *enrollments) key(ghostID string) (string, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	en, ok := e.byID[ghostID]
	return en.PublicKey, ok
}

// all returns ghost id → public key.
func (e *enrollments) all() map[string]string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	out := make(map[string]string, len(e.byID))
	for id, en := range e.byID {
		out[id] = en.PublicKey
	}
	return out
}

// roleOf returns the role key (FleetKeyMirage, FleetKeyOperator) publicKey is stored
// under, or "".
func (e *enrollments) roleOf(publicKey string) string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	for role, pub := range e.roles {
		if pub == publicKey {
			return role
		}
	}
	return ""
}

func (e *enrollments) list() []Enrollment {
	e.mu.RLock()
	out := make([]Enrollment, 0, len(e.byID))
	for _, en := range e.byID {
		out = append(out, en)
	}
	e.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].GhostID < out[j].GhostID })
	return out
}

func (e *enrollments) put(ctx context.Context, key string, en Enrollment) error {
	data, err := json.Marshal(en)
	if err != nil {
		return err
	}
	if _, err := e.kv.Put(ctx, key, data); err != nil {
		return err
	}
	e.mu.Lock()
	if strings.HasPrefix(key, "_") {
		e.roles[key] = en.PublicKey
	} else {
		e.byID[key] = en
	}
	e.mu.Unlock()
	return nil
}

func (e *enrollments) remove(ctx context.Context, ghostID string) (bool, error) {
	e.mu.RLock()
	_, ok := e.byID[ghostID]
	e.mu.RUnlock()
	if !ok {
		return false, nil
	}
	if err := e.kv.Delete(ctx, ghostID); err != nil {
		return false, err
	}
	e.mu.Lock()
	delete(e.byID, ghostID)
	e.mu.Unlock()
	return true, nil
}

// Enroll binds ghostID to publicKey (as 'fleet add' does).
func (m *Mirage) Enroll(ctx context.Context, ghostID, publicKey string) error {
	if err := m.pinned(ghostID); err != nil {
		return err
	}
	if err := m.enroll(ctx, ghostID, publicKey); err != nil {
		return err
	}
	return m.fleetChanged()
}

// pinned refuses to change the enrollment of a Ghost enrolled at every start
// (Config.EnrollAtStart: 'up --auth' does so for its local Ghost, whose key the server
// admits whatever edge_fleet says): the change would not hold, the server and Mirage
// would disagree until the next start put it back.
func (m *Mirage) pinned(ghostID string) error {
	if _, ok := m.cfg.EnrollAtStart[ghostID]; ok {
		return bus.FieldError(bus.CodeSemantic, "ghost_id", "ghost %s is enrolled by Mirage itself at every start (the Ghost 'miragectl up' runs); start 'miragectl up --no-local-ghost' to run without it", ghostID)
	}
	return nil
}

// enroll records an enrollment; the caller applies it (fleetChanged).
func (m *Mirage) enroll(ctx context.Context, ghostID, publicKey string) error {
	if err := subjects.ValidateGhostID(ghostID); err != nil {
		return bus.FieldError(bus.CodeSemantic, "ghost_id", "%s", subjects.Reason(err))
	}
	if err := bus.ValidatePublicKey(publicKey); err != nil {
		return bus.FieldError(bus.CodeSemantic, "public_key", "%v", err)
	}
	for id, pub := range m.enrolled.all() {
		if pub == publicKey && id != ghostID {
			return bus.FieldError(bus.CodeSemantic, "public_key", "already enrolled as ghost %s; one key, one ghost", id)
		}
	}
	// The server keeps one user per key: enrolling the operator's or Mirage's key as a
	// Ghost would demote it to a Ghost's permissions (and lock it out after a restart).
	role := m.enrolled.roleOf(publicKey)
	if m.cfg.Identity != nil && m.cfg.Identity.PublicKey() == publicKey {
		role = FleetKeyMirage
	}
	if role != "" {
		who := map[string]string{FleetKeyMirage: "Mirage", FleetKeyOperator: "the operator"}[role]
		return bus.FieldError(bus.CodeSemantic, "public_key", "is the key of %s, not of a ghost: use the key 'ghostctl init' printed for %s", who, ghostID)
	}
	if err := m.enrolled.put(ctx, ghostID, Enrollment{GhostID: ghostID, PublicKey: publicKey, EnrolledMS: m.cfg.Now().UnixMilli()}); err != nil {
		return bus.Errorf(bus.CodeInternal, "store enrollment: %v", err)
	}
	m.log.Info("ghost enrolled", "peer", ghostID)
	return nil
}

// RecordOperatorKey stores the operator's public key in KV edge_fleet, so that
// 'fleet auth-config' can grant it.
func (m *Mirage) RecordOperatorKey(ctx context.Context, publicKey string) error {
	if err := bus.ValidatePublicKey(publicKey); err != nil {
		return err
	}
	return m.enrolled.put(ctx, FleetKeyOperator, Enrollment{GhostID: FleetKeyOperator, PublicKey: publicKey, EnrolledMS: m.cfg.Now().UnixMilli()})
}

// Revoke removes a Ghost's enrollment (as 'fleet rm' does) and its registry entry. The
// server stops admitting the Ghost first: should that fail, the Ghost stays enrolled, so
// that running 'fleet rm' again finishes the job rather than answering "not enrolled"
// while the server still lets it in.
func (m *Mirage) Revoke(ctx context.Context, ghostID string) error {
	if err := m.pinned(ghostID); err != nil {
		return err
	}
	rest := m.enrolled.all()
	if _, ok := rest[ghostID]; !ok {
		if _, registered := m.fleet.Get(ghostID); registered {
			// A registry record without an enrollment (left from before --auth): nothing
			// to take from the server, the record goes.
			m.fleet.forget(ctx, ghostID)
			m.log.Info("registry record of a ghost that is not enrolled removed", "peer", ghostID)
			return nil
		}
		return bus.FieldError(bus.CodeSemantic, "ghost_id", "ghost %s is not enrolled", ghostID)
	}
	delete(rest, ghostID)
	if m.cfg.OnFleetChange != nil {
		if err := m.cfg.OnFleetChange(rest); err != nil {
			return bus.Errorf(bus.CodeInternal, "apply the fleet to the server: %v (ghost %s is still enrolled; run 'fleet rm' again)", err, ghostID)
		}
	}
	if _, err := m.enrolled.remove(ctx, ghostID); err != nil {
		return bus.Errorf(bus.CodeInternal, "remove enrollment: %v (the server no longer admits ghost %s; run 'fleet rm' again)", err, ghostID)
	}
	m.fleet.forget(ctx, ghostID)
	m.log.Info("ghost revoked", "peer", ghostID)
	return nil
}

// fleetChanged tells the server that serves this fleet (when Mirage embeds it).
func (m *Mirage) fleetChanged() error {
	if m.cfg.OnFleetChange == nil {
		return nil
	}
	if err := m.cfg.OnFleetChange(m.enrolled.all()); err != nil {
		return bus.Errorf(bus.CodeInternal, "apply the fleet to the server: %v", err)
	}
	return nil
}

// onFleet serves mirage.fleet.add, .rm and .list.
func (m *Mirage) onFleet(msg *nats.Msg) {
	reply := FleetReply{Status: "accepted"}
	var req FleetRequest
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	switch msg.Subject {
	case subjects.FleetList:
	case subjects.FleetAdd, subjects.FleetRemove:
		if jerr := json.Unmarshal(msg.Data, &req); jerr != nil {
			err = bus.Errorf(bus.CodeFraming, "fleet request is not JSON: %v", jerr)
		} else if msg.Subject == subjects.FleetAdd {
			err = m.Enroll(ctx, req.GhostID, req.PublicKey)
		} else {
			err = m.Revoke(ctx, req.GhostID)
		}
	default:
		err = bus.Errorf(bus.CodeSemantic, "unknown fleet request %s", msg.Subject)
	}
	if err != nil {
		reply.Status, reply.Error = "rejected", bus.AsError(err)
	}
	if msg.Subject == subjects.FleetList {
		// Only list carries the fleet: about 130 bytes a Ghost, beyond what one message may
		// hold from about 8,000 Ghosts on ('fleet ls' reads KV edge_fleet instead).
		reply.Fleet = m.enrolled.list()
	}
	data, jerr := json.Marshal(reply)
	if jerr == nil && int64(len(data)) > m.nc.MaxPayload() {
		n := len(reply.Fleet)
		reply.Fleet = nil
		reply.Status, reply.Error = "rejected", bus.Errorf(bus.CodeTooLarge,
			"the %d enrolled Ghosts take %d bytes, more than one message may hold (%d): read them from KV %s ('miragectl fleet ls' does)",
			n, len(data), m.nc.MaxPayload(), bus.BucketFleet)
		data, jerr = json.Marshal(reply)
	}
	if jerr != nil || msg.Reply == "" {
		return
	}
	if err := msg.Respond(data); err != nil {
		m.log.Warn("fleet request not answered", "subject", msg.Subject, "err", err)
	}
}

// verifyEvent checks, when events must be signed, that the event was signed by the key
// enrolled for its ghost_id.
func (m *Mirage) verifyEvent(ev *bus.Event, data []byte, h nats.Header) error {
	if !m.cfg.RequireSignedEvents {
		return nil
	}
	want, ok := m.enrolled.key(ev.GhostID)
	if !ok {
		return bus.Errorf(bus.CodeSecurity, "ghost %s is not enrolled", ev.GhostID)
	}
	_, err := bus.VerifySignature(data, h, func(signer string) bool { return signer == want })
	if err != nil {
		return fmt.Errorf("event from %s: %w", ev.GhostID, err)
	}
	return nil
}

// AttachRequest asks Mirage to bring a headless Ghost into the registry.
type AttachRequest struct {
	GhostID string `json:"ghost_id"`
}

// decodeAttach reads an attach request: not JSON (or not an object) is 1100, a field of
// the wrong type 1200, an invalid ghost_id 1300.
func decodeAttach(data []byte) (AttachRequest, *bus.Error) {
	var req AttachRequest
	if err := json.Unmarshal(data, &req); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return req, bus.FieldError(bus.CodeDecode, te.Field, "is a JSON %s, expected a %s", te.Value, te.Type)
		}
		return req, bus.Errorf(bus.CodeFraming, "attach request is not a JSON object: %v", err)
	}
	if err := subjects.ValidateGhostID(req.GhostID); err != nil {
		return req, bus.FieldError(bus.CodeSemantic, "ghost_id", "%s", subjects.Reason(err))
	}
	return req, nil
}

// onAttach serves mirage.attach: it asks the Ghost, on attach.<id>, to register now, and
// answers with the Ghost's reply.
func (m *Mirage) onAttach(msg *nats.Msg) {
	// Each attach waits for its Ghost's registration (up to bus.AttachRelayWait) in a
	// goroutine of its own, a few at once: a Ghost that never answers must not hold the
	// operator's next attach past its client's wait.
	select {
	case m.attaches <- struct{}{}:
	default:
		refuseAttach(msg, bus.Errorf(bus.CodeBusy, "%d attach requests are being served; try again shortly", cap(m.attaches)))
		return
	}
	m.spawnHolding(m.attaches, func() { m.attach(msg) })
}

// AttachReply is Mirage's answer on mirage.attach. Error, with a code, says why a request
// was refused before any Ghost was asked (its reason is Error's message).
type AttachReply struct {
	Status string     `json:"status"` // accepted | rejected | unreachable
	Reason string     `json:"reason"`
	Error  *bus.Error `json:"error,omitempty"`
}

// refuseAttach answers an attach request refused before its Ghost is asked.
func refuseAttach(msg *nats.Msg, perr *bus.Error) {
	if data, err := json.Marshal(AttachReply{Status: "rejected", Reason: perr.Message, Error: perr}); err == nil && msg.Reply != "" {
		_ = msg.Respond(data)
	}
}

// attach relays one attach request to its Ghost and answers with the Ghost's answer.
func (m *Mirage) attach(msg *nats.Msg) {
	respond := func(status, reason string) {
		data, _ := json.Marshal(AttachReply{Status: status, Reason: reason})
		if msg.Reply != "" {
			_ = msg.Respond(data)
		}
	}
	req, perr := decodeAttach(msg.Data)
	if perr != nil {
		refuseAttach(msg, perr)
		return
	}
	// The Ghost acts only on a request that names it, signed by Mirage when Mirage signs:
	// anything else on attach.<id> (another Ghost's event publish ack steered there by
	// its reply subject) is refused.
	body, err := json.Marshal(AttachRequest{GhostID: req.GhostID})
	if err != nil {
		refuseAttach(msg, bus.Errorf(bus.CodeInternal, "%v", err))
		return
	}
	out := nats.NewMsg(subjects.AttachGhost(req.GhostID))
	out.Data = body
	if m.cfg.Identity != nil {
		if err := bus.SignMsg(out, m.cfg.Identity); err != nil {
			refuseAttach(msg, bus.Errorf(bus.CodeInternal, "cannot sign the attach request: %v", err))
			return
		}
	}
	ctx, cancel := context.WithTimeout(m.running, bus.AttachRelayWait) // Close ends the wait
	defer cancel()
	reply, err := m.nc.RequestMsgWithContext(ctx, out)
	if err != nil {
		respond("unreachable", fmt.Sprintf("ghost %s did not answer on %s: %v", req.GhostID, subjects.AttachGhost(req.GhostID), err))
		return
	}
	var ans struct{ Status, Reason string }
	if err := json.Unmarshal(reply.Data, &ans); err != nil {
		respond("rejected", "malformed answer from the ghost")
		return
	}
	m.log.Info("attach", "peer", req.GhostID, "status", ans.Status)
	respond(ans.Status, ans.Reason)
}
