package declarative

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// ObjectReader reads the content of an object of edge_seeds, at most max bytes, checked
// against the store's size and digest, with the errors of Objects.Get. *Objects reads by
// direct get (no auth: headless, no Mirage needed); *MirageObjects through Mirage (under
// auth a Ghost has no JetStream API permission on the store).
type ObjectReader interface {
	Get(ctx context.Context, name string, max uint64) ([]byte, error)
}

// ErrNoMirage is wrapped by MirageObjects.Get when no Mirage answered, or its answer
// stopped: retryable, like a store that cannot be reached.
var ErrNoMirage = errors.New("no Mirage answered")

// MirageWait bounds the wait for each message of Mirage's answer to a seed read.
const MirageWait = 10 * time.Second

// Busy answers (a request of this Ghost still being served, say one it stopped waiting
// for) are retried busyAttempts times, busyBackoff×attempt apart.
const (
	busyAttempts = 3
	busyBackoff  = 250 * time.Millisecond
)

// MirageObjects reads objects of edge_seeds through Mirage: a bus.SeedRequest on
// mirage.seed.<ghost_id>, answered on a fresh inbox of the Ghost's own with the content
// in chunks (header bus.HeaderSeedChunk) and a final bus.SeedAnswer. Mirage reads the
// store with Objects (direct get, re-reads, digest checks); the Ghost checks again that
// what arrived is the size and digest Mirage read. One request at a time: Mirage serves
// one per Ghost.
type MirageObjects struct {
	nc      *nats.Conn
	ghostID string
	wait    time.Duration
	turn    chan struct{}
}

// NewMirageObjects reads through Mirage on nc, the connection of Ghost ghostID.
func NewMirageObjects(nc *nats.Conn, ghostID string) *MirageObjects {
	return &MirageObjects{nc: nc, ghostID: ghostID, wait: MirageWait, turn: make(chan struct{}, 1)}
}

// Get returns the content of object name, at most max bytes. Errors, as Objects.Get:
// jetstream.ErrObjectNotFound, ErrObjectTooLarge, ErrChunkMissing (also a chunk lost on
// the way), jetstream.ErrDigestMismatch (Mirage found the store corrupt, or what arrived
// is not what it read); and ErrNoMirage, or Mirage's *bus.Error (1501 busy after
// retries, a refused request).
func (o *MirageObjects) Get(ctx context.Context, name string, max uint64) ([]byte, error) {
	select {
	case o.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w on %s before the deadline: %v", ErrNoMirage, subjects.SeedFor(o.ghostID), ctx.Err())
	}
	defer func() { <-o.turn }()
	for attempt := 1; ; attempt++ {
		data, err := o.get(ctx, name, max)
		var perr *bus.Error
		if attempt == busyAttempts || !errors.As(err, &perr) || perr.Code != bus.CodeBusy {
			return data, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Duration(attempt) * busyBackoff):
		}
	}
}

// get sends one request and reads its answer.
func (o *MirageObjects) get(ctx context.Context, name string, max uint64) ([]byte, error) {
	subject := subjects.SeedFor(o.ghostID)
	// Subscribed before the request is sent, on the Ghost's own inbox: the only reply
	// subject Mirage answers a Ghost on under auth.
	inbox := bus.GhostInbox(o.ghostID) + "." + nuid.Next()
	sub, err := o.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("subscribe to %s: %w", inbox, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// Room for the whole answer: a message dropped beyond it shows as a missing chunk.
	_ = sub.SetPendingLimits(int(max/bus.SeedChunkSize)+16, int(min(max, MaxFileSize))+2*bus.SeedChunkSize)
	req, err := json.Marshal(bus.SeedRequest{Object: name, MaxSize: max})
	if err != nil {
		return nil, err
	}
	if err := o.nc.PublishRequest(subject, inbox, req); err != nil {
		return nil, fmt.Errorf("request %s: %w", subject, err)
	}
	var data []byte
	n := 0
	for {
		wctx, cancel := context.WithTimeout(ctx, o.wait)
		msg, err := sub.NextMsgWithContext(wctx)
		cancel()
		if err != nil {
			if errors.Is(err, nats.ErrNoResponders) {
				return nil, fmt.Errorf("%w on %s: nothing subscribes to it; is Mirage running?", ErrNoMirage, subject)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				if n == 0 {
					return nil, fmt.Errorf("%w on %s within %s: is Mirage running?", ErrNoMirage, subject, o.wait)
				}
				return nil, fmt.Errorf("%w: its answer on %s stopped after %d chunks of object %s", ErrNoMirage, subject, n, name)
			}
			return nil, err
		}
		if c := msg.Header.Get(bus.HeaderSeedChunk); c != "" {
			n++
			if c != strconv.Itoa(n) {
				return nil, fmt.Errorf("%w: chunk %s of object %s arrived through Mirage where chunk %d was due: one was lost on the way", ErrChunkMissing, c, name, n)
			}
			if uint64(len(data))+uint64(len(msg.Data)) > max {
				return nil, fmt.Errorf("%w: Mirage sent more than %d bytes of object %s", jetstream.ErrDigestMismatch, max, name)
			}
			data = append(data, msg.Data...)
			continue
		}
		var ans bus.SeedAnswer
		if err := json.Unmarshal(msg.Data, &ans); err != nil {
			return nil, fmt.Errorf("the answer on %s is not a seed answer: %v", subject, err)
		}
		return checkAnswer(name, ans, data, n)
	}
}

// checkAnswer turns Mirage's final answer and the content that came before it into the
// result of Get.
func checkAnswer(name string, ans bus.SeedAnswer, data []byte, chunks int) ([]byte, error) {
	if ans.Status != bus.SeedOK {
		msg := ans.Status
		if ans.Error != nil {
			msg = ans.Error.Message
		}
		switch ans.Status {
		case bus.SeedNotFound:
			return nil, &mirageError{msg, jetstream.ErrObjectNotFound}
		case bus.SeedTooLarge:
			return nil, &mirageError{msg, ErrObjectTooLarge}
		case bus.SeedUnreadable:
			return nil, &mirageError{msg, ErrChunkMissing}
		case bus.SeedCorrupt:
			return nil, &mirageError{msg, jetstream.ErrDigestMismatch}
		}
		if ans.Error != nil {
			return nil, ans.Error
		}
		return nil, bus.Errorf(bus.CodeRuntime, "Mirage answered %q", ans.Status)
	}
	switch {
	case ans.Object != name:
		return nil, fmt.Errorf("Mirage answered about object %q, not %s", ans.Object, name)
	case ans.Chunks != chunks:
		return nil, fmt.Errorf("%w: Mirage sent %d chunks of object %s, %d arrived", ErrChunkMissing, ans.Chunks, name, chunks)
	case uint64(len(data)) != ans.Size:
		return nil, fmt.Errorf("%w: %d bytes arrived through Mirage, it read %d", jetstream.ErrDigestMismatch, len(data), ans.Size)
	case ans.Digest != ObjectDigest(data):
		return nil, fmt.Errorf("%w: what arrived through Mirage does not match the digest it read", jetstream.ErrDigestMismatch)
	}
	if data == nil {
		data = []byte{}
	}
	return data, nil
}

// mirageError is an error of Mirage's read, as its answer says it: the sentinel of
// Objects.Get it stands for, with Mirage's message.
type mirageError struct {
	msg string
	is  error
}

func (e *mirageError) Error() string { return e.msg }
func (e *mirageError) Unwrap() error { return e.is }

// ObjectDigest is the SHA-256 of data as the object store writes it: SHA-256=<base64url>.
func ObjectDigest(data []byte) string {
	sum := sha256.Sum256(data)
	return "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:])
}

// ReadOutcome is the status and code of the seed answer to a read that ended with err (an
// error of Objects.Get; nil: ok): the codes Fetch gives the same errors.
func ReadOutcome(err error) (string, bus.Code) {
	switch {
	case err == nil:
		return bus.SeedOK, 0
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return bus.SeedNotFound, bus.CodeSemantic
	case errors.Is(err, ErrObjectTooLarge):
		return bus.SeedTooLarge, bus.CodeSemantic
	case errors.Is(err, ErrChunkMissing):
		return bus.SeedUnreadable, bus.CodeRuntime
	case errors.Is(err, jetstream.ErrDigestMismatch):
		return bus.SeedCorrupt, bus.CodeSecurity
	}
	return bus.SeedFailed, bus.CodeRuntime
}

// objectChars are the bytes of an object name (PatternObject).
const objectChars = alnum + "._+/-"

// ValidateObjectName checks that name is an object name of the seed store's scheme (see
// SpecObject): <id>/latest.json, or <id>/<version>/<path> with a valid seed id and
// version and a path of elements other than "", "." and "..": spec.toml, manifest.json,
// files/<name>, or the spec object an install names. At most 400 bytes of
// A-Z a-z 0-9 . _ + / - (PatternObject).
func ValidateObjectName(name string) error {
	if !isName(name, 400, objectChars, objectChars) {
		return fmt.Errorf("object name %q: use 1-400 of A-Z a-z 0-9 . _ + / -", name)
	}
	parts := strings.Split(name, "/")
	if err := ValidateSeedID(parts[0]); err != nil {
		return fmt.Errorf("object name %q: %w", name, err)
	}
	if len(parts) == 2 && parts[1] == "latest.json" {
		return nil
	}
	if len(parts) < 3 {
		return fmt.Errorf("object name %q is not <id>/latest.json or <id>/<version>/<path>", name)
	}
	if err := ValidateVersion(parts[1]); err != nil {
		return fmt.Errorf("object name %q: %w", name, err)
	}
	for _, p := range parts[2:] {
		if p == "" || p == "." || p == ".." {
			return fmt.Errorf("object name %q has an empty, . or .. element", name)
		}
	}
	return nil
}
