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

// Read returns the content of the object info describes, checked as the object store
// checks it: every chunk read, the total equal to its size, the SHA-256 equal to its
// digest. A mismatch wraps jetstream.ErrDigestMismatch.
func (o *Objects) Read(ctx context.Context, info *jetstream.ObjectInfo) ([]byte, error) {
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
			return nil, fmt.Errorf("%w: chunk %d of %d is missing", jetstream.ErrDigestMismatch, n+1, info.Chunks)
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
