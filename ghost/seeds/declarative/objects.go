package declarative

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
)

// Objects reads the objects of edge_seeds by direct get, without a consumer: a Ghost may
// not create consumers (natsd.GhostPermissions; nats-server does not check a consumer's
// deliver subject against its creator's permissions), and jetstream's ObjectStore.Get
// reads chunks through one. The layout is the object store's: an object's meta is the
// last message on $O.<bucket>.M.<base64url(name)>, its chunks are the messages on
// $O.<bucket>.C.<nuid>, in stream order.
type Objects struct {
	bucket string
	stream jetstream.Stream
}

// OpenObjects binds to the object store edge_seeds. It returns jetstream.ErrBucketNotFound
// when the store does not exist.
func OpenObjects(ctx context.Context, js jetstream.JetStream) (*Objects, error) {
	stream, err := js.Stream(ctx, "OBJ_"+bus.BucketSeeds)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, jetstream.ErrBucketNotFound
	}
	if err != nil {
		return nil, err
	}
	// Without direct get, jetstream's GetMsg falls back to STREAM.MSG.GET, which a
	// Ghost may not call: say so rather than time out.
	if !stream.CachedInfo().Config.AllowDirect {
		return nil, fmt.Errorf("stream OBJ_%s does not allow direct get", bus.BucketSeeds)
	}
	return &Objects{bucket: bus.BucketSeeds, stream: stream}, nil
}

// Info returns the meta of object name. It returns jetstream.ErrObjectNotFound when there
// is none or it was deleted.
func (o *Objects) Info(ctx context.Context, name string) (*jetstream.ObjectInfo, error) {
	subject := "$O." + o.bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name))
	msg, err := o.stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, jetstream.ErrObjectNotFound
	}
	if err != nil {
		return nil, err
	}
	var info jetstream.ObjectInfo
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		return nil, jetstream.ErrBadObjectMeta
	}
	if info.Deleted {
		return nil, jetstream.ErrObjectNotFound
	}
	return &info, nil
}

// ErrChunkMissing is wrapped by Get when a chunk the meta names cannot be read: the object
// was being put again (a re-put purges the old chunks), or a lagging replica answered the
// direct get. It is transient: a later read usually succeeds.
var ErrChunkMissing = errors.New("chunk missing")

// ErrObjectTooLarge is wrapped by Get when the meta gives a size over the caller's limit.
var ErrObjectTooLarge = errors.New("too large")

// A read that meets a missing chunk or a short content reads the meta again and, when the
// object changed (put again under the same name) or a replica may catch up, reads again:
// at most readAttempts reads, readBackoff×attempt apart.
const (
	readAttempts = 3
	readBackoff  = 100 * time.Millisecond
)

// Get returns the content of object name, at most max bytes, checked as the object store
// checks it: every chunk read, the total equal to the meta's size, the SHA-256 equal to its
// digest. Each meta request is bounded by InfoTimeout. Errors: jetstream.ErrObjectNotFound
// (none, deleted, or deleted while read), ErrObjectTooLarge, ErrChunkMissing (still
// missing after readAttempts reads; retryable), jetstream.ErrDigestMismatch (every chunk
// read, under a meta that did not change: the store is corrupt or tampered with).
func (o *Objects) Get(ctx context.Context, name string, max uint64) ([]byte, error) {
	info, err := o.meta(ctx, name, max)
	if err != nil {
		return nil, err
	}
	return o.readFrom(ctx, info, max)
}

// readFrom reads the object info describes, or the one put under its name since.
func (o *Objects) readFrom(ctx context.Context, info *jetstream.ObjectInfo, max uint64) ([]byte, error) {
	for attempt := 1; ; attempt++ {
		data, err := o.read(ctx, info)
		if err == nil || attempt == readAttempts ||
			!(errors.Is(err, ErrChunkMissing) || errors.Is(err, jetstream.ErrDigestMismatch)) {
			return data, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(time.Duration(attempt) * readBackoff):
		}
		fresh, ferr := o.meta(ctx, info.Name, max)
		if ferr != nil {
			return nil, ferr
		}
		// Chunks are immutable under their nuid: under the same meta a mismatch with every
		// chunk read stays one. A missing chunk may still arrive (a lagging replica).
		if sameObject(fresh, info) && errors.Is(err, jetstream.ErrDigestMismatch) {
			return nil, err
		}
		info = fresh
	}
}

func (o *Objects) meta(ctx context.Context, name string, max uint64) (*jetstream.ObjectInfo, error) {
	ictx, cancel := context.WithTimeout(ctx, InfoTimeout)
	defer cancel()
	info, err := o.Info(ictx, name)
	if err != nil {
		return nil, err
	}
	if info.Size > max {
		return nil, fmt.Errorf("%w: object %s is %d bytes, at most %d are allowed", ErrObjectTooLarge, name, info.Size, max)
	}
	return info, nil
}

func sameObject(a, b *jetstream.ObjectInfo) bool {
	return a.NUID == b.NUID && a.Size == b.Size && a.Chunks == b.Chunks && a.Digest == b.Digest
}

// read reads the chunks info names, once.
func (o *Objects) read(ctx context.Context, info *jetstream.ObjectInfo) ([]byte, error) {
	if info.Opts != nil && info.Opts.Link != nil {
		return nil, fmt.Errorf("object %s is a link; edgectl does not push links", info.Name)
	}
	// The nuid is a subject token of the chunks' subject: nothing else may stand there.
	if info.NUID == "" || strings.ContainsAny(info.NUID, ".*> \t\r\n") {
		return nil, jetstream.ErrBadObjectMeta
	}
	want, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil {
		return nil, jetstream.ErrBadObjectMeta
	}
	subject := "$O." + o.bucket + ".C." + info.NUID
	data := make([]byte, 0, info.Size)
	sum := sha256.New()
	for seq, n := uint64(1), uint32(0); n < info.Chunks; n++ {
		msg, err := o.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("%w: chunk %d of %d, nuid %s, not found", ErrChunkMissing, n+1, info.Chunks, info.NUID)
		}
		if err != nil {
			return nil, err
		}
		if uint64(len(data))+uint64(len(msg.Data)) > info.Size {
			return nil, fmt.Errorf("%w: more than %d bytes", jetstream.ErrDigestMismatch, info.Size)
		}
		data = append(data, msg.Data...)
		sum.Write(msg.Data)
		seq = msg.Sequence + 1
	}
	if uint64(len(data)) != info.Size {
		return nil, fmt.Errorf("%w: %d bytes, the meta says %d", jetstream.ErrDigestMismatch, len(data), info.Size)
	}
	if !bytes.Equal(sum.Sum(nil), want) {
		return nil, fmt.Errorf("%w: the chunks do not match the meta's digest", jetstream.ErrDigestMismatch)
	}
	return data, nil
}
