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
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// ErrNoMirage is wrapped by MirageObjects.Get when no Mirage answered: retryable, like a
// store that cannot be reached.
var ErrNoMirage = errors.New("no Mirage answered")

// ErrMirageStalled is wrapped by MirageObjects.Get when Mirage's answer started and then
// stopped (a slow or broken link, Mirage stopping): retryable.
var ErrMirageStalled = errors.New("the answer from Mirage stalled")

// Busy answers (a request of this Ghost still being served, say one it stopped waiting
// for, or one sooner than bus.SeedEvery after the last) are retried busyAttempts times,
// bus.SeedEvery×attempt apart: at least the interval Mirage keeps between a Ghost's reads.
const busyAttempts = 3

// MirageObjects reads objects of edge_seeds through Mirage: a bus.SeedRequest on
// mirage.seed.<ghost_id>, answered on a fresh inbox of the Ghost's own with the content
// in chunks (header bus.HeaderSeedChunk) and a final bus.SeedAnswer. Mirage reads the
// store with Objects (direct get, re-reads, digest checks); the Ghost checks again that
// what arrived is the size and digest Mirage read. One request at a time: Mirage serves
// one per Ghost, and one per bus.SeedEvery after the last ended.
type MirageObjects struct {
	nc      *nats.Conn
	ghostID string
	// firstWait bounds the wait for the first message of an answer (bus.SeedFirstWait),
	// pieceWait for each further one (bus.SeedPieceWait), every the time between the end
	// of one request and the next (bus.SeedEvery); tests shorten them.
	firstWait, pieceWait, every time.Duration
	turn                        chan struct{}
	ended                       time.Time // of the last request; under turn
	answersMu                   sync.Mutex
	answers                     *bus.Answers
}

// NewMirageObjects reads through Mirage on nc, the connection of Ghost ghostID. When the
// server requires authentication (the reads go through Mirage) it subscribes for the
// answers at once, so that a cluster knows the subscription before the first request.
func NewMirageObjects(nc *nats.Conn, ghostID string) *MirageObjects {
	o := &MirageObjects{nc: nc, ghostID: ghostID, firstWait: bus.SeedFirstWait, pieceWait: bus.SeedPieceWait,
		every: bus.SeedEvery, turn: make(chan struct{}, 1)}
	if nc.AuthRequired() || !nc.IsConnected() { // not yet connected: auth not known yet
		_, _ = o.answerSubscription() // a failure is retried, and reported, by Get
	}
	return o
}

// answerSubscription returns the subscription for Mirage's answers, made now if need be.
func (o *MirageObjects) answerSubscription() (*bus.Answers, error) {
	o.answersMu.Lock()
	defer o.answersMu.Unlock()
	if o.answers == nil {
		a, err := bus.NewAnswers(o.nc, bus.GhostInbox(o.ghostID))
		if err != nil {
			return nil, err
		}
		o.answers = a
	}
	return o.answers, nil
}

// Get returns the content of object name, at most max bytes. Errors, as Objects.Get:
// jetstream.ErrObjectNotFound, ErrObjectTooLarge, ErrChunkMissing (also a chunk lost on
// the way), jetstream.ErrDigestMismatch (Mirage found the store corrupt, or what arrived
// is not what it read); ErrNoMirage (no answer at all), ErrMirageStalled (an answer that
// stopped), or Mirage's *bus.Error (1501 busy after retries, a refused request).
func (o *MirageObjects) Get(ctx context.Context, name string, max uint64) ([]byte, error) {
	select {
	case o.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w on %s before the deadline: %v", ErrNoMirage, subjects.SeedFor(o.ghostID), ctx.Err())
	}
	defer func() { <-o.turn }()
	// Spaced like Mirage's gate, so that reading the objects of an install one after
	// another is not answered busy.
	if wait := time.Until(o.ended.Add(o.every)); wait > 0 {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w on %s before the deadline: %v", ErrNoMirage, subjects.SeedFor(o.ghostID), ctx.Err())
		case <-time.After(wait):
		}
	}
	for attempt := 1; ; attempt++ {
		data, err := o.get(ctx, name, max)
		o.ended = time.Now()
		var perr *bus.Error
		if attempt == busyAttempts || !errors.As(err, &perr) || perr.Code != bus.CodeBusy {
			return data, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Duration(attempt) * o.every):
		}
	}
}

// get sends one request and reads its answer.
func (o *MirageObjects) get(ctx context.Context, name string, max uint64) ([]byte, error) {
	subject := subjects.SeedFor(o.ghostID)
	// On the Ghost's own inbox, the only reply subject Mirage answers a Ghost on under
	// auth, through a subscription made before (bus.Answers). Room for the whole answer:
	// a message dropped beyond it shows as a missing chunk.
	answers, err := o.answerSubscription()
	if err != nil {
		return nil, err
	}
	box := answers.Open(int(min(max, MaxFileSize)/bus.SeedChunkSize) + 16)
	defer box.Close()
	inbox := box.Inbox
	req, err := json.Marshal(bus.SeedRequest{Object: name, MaxSize: max})
	if err != nil {
		return nil, err
	}
	if err := o.nc.PublishRequest(subject, inbox, req); err != nil {
		return nil, fmt.Errorf("request %s: %w", subject, err)
	}
	var data []byte
	n := 0
	size := "?" // the object's size, as the first chunk says it
	for {
		wait := o.pieceWait
		if n == 0 {
			wait = o.firstWait // Mirage may wait for a read slot, then read the store
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		msg, err := box.Next(wctx)
		cancel()
		switch {
		case err == nil:
		case errors.Is(err, nats.ErrNoResponders):
			return nil, fmt.Errorf("%w on %s: nothing subscribes to it; is Mirage running?", ErrNoMirage, subject)
		case n == 0 && ctx.Err() != nil:
			return nil, fmt.Errorf("%w on %s before the deadline: %v", ErrNoMirage, subject, ctx.Err())
		case n == 0 && errors.Is(err, context.DeadlineExceeded):
			return nil, fmt.Errorf("%w on %s within %s: is Mirage running?", ErrNoMirage, subject, wait)
		case ctx.Err() != nil:
			return nil, fmt.Errorf("%w after %d of %s bytes of object %s on %s: the deadline passed (%v)", ErrMirageStalled, len(data), size, name, subject, ctx.Err())
		case errors.Is(err, context.DeadlineExceeded):
			return nil, fmt.Errorf("%w after %d of %s bytes of object %s on %s: nothing more within %s (a slow link?)", ErrMirageStalled, len(data), size, name, subject, wait)
		default:
			return nil, err
		}
		if c := msg.Header.Get(bus.HeaderSeedChunk); c != "" {
			n++
			if n == 1 && msg.Header.Get(bus.HeaderSeedSize) != "" {
				size = msg.Header.Get(bus.HeaderSeedSize)
			}
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
