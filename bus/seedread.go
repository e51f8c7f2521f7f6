package bus

import "time"

// Under auth a Ghost has no JetStream API permission on the seed store: nats-server does
// not check a request's reply subject against the requester's permissions, and JetStream
// answers there with the account's rights, so every API call a Ghost may make could
// carry another one in its reply subject (an empty direct get answer is an empty
// STREAM.DELETE request). It reads pushed seed files through Mirage instead: a
// SeedRequest on mirage.seed.<ghost_id> (subjects.SeedFor), answered on the Ghost's own
// inbox with the object's bytes in messages of at most SeedChunkSize, each with header
// HeaderSeedChunk, then one SeedAnswer without it.

// SeedRequest is the body of a seed read request. The Ghost is the subject's token,
// never a field: only that Ghost may publish on its subject.
type SeedRequest struct {
	// Object is the object's name in edge_seeds (<id>/<version>/spec.toml, …).
	Object string `json:"object"`
	// MaxSize is the most bytes the Ghost accepts: a larger object is refused (too_large).
	MaxSize uint64 `json:"max_size"`
}

// SeedAnswer ends the answer to a seed read request.
type SeedAnswer struct {
	Status string `json:"status"` // one of the SeedStatus values
	Object string `json:"object,omitempty"`
	// Size is the object's size: of the content sent (ok), or the size that was too large.
	Size uint64 `json:"size"`
	// Digest is the content's SHA-256 as the object store writes it: SHA-256=<base64url>.
	Digest string `json:"digest,omitempty"`
	// Chunks is how many chunk messages were sent before this one.
	Chunks int    `json:"chunks"`
	Error  *Error `json:"error,omitempty"`
}

// Statuses of a SeedAnswer: ok, or why nothing was sent. not_found, too_large,
// unreadable and corrupt are the outcomes of the store's read (codes 1300, 1300, 1400,
// 1800); busy (1501) a request over the Ghost's bounds (one at a time, SeedEvery apart); rejected a malformed request
// (1100, 1200, 1300); failed any other failure to read the store (1400).
const (
	SeedOK         = "ok"
	SeedNotFound   = "not_found"
	SeedTooLarge   = "too_large"
	SeedUnreadable = "unreadable"
	SeedCorrupt    = "corrupt"
	SeedBusy       = "busy"
	SeedRejected   = "rejected"
	SeedFailed     = "failed"
)

// SeedChunkSize is the most content bytes one answer message carries: small enough that
// one arrives within SeedPieceWait on a link of a few KB/s (4 s at 32 KB/s).
const SeedChunkSize = 128 << 10

// Timing of a seed read, shared by Mirage and the Ghost so that their waits cannot drift
// apart. Mirage holds a request at most SeedSlotWait for one of its read slots (a request
// that waited longer is dropped) and reads the object at most SeedReadTimeout; the Ghost
// waits SeedFirstWait for the first message of the answer, which covers both, and then
// SeedPieceWait for each further one.
const (
	SeedSlotWait    = 5 * time.Second
	SeedReadTimeout = 30 * time.Second
	SeedFirstWait   = SeedSlotWait + SeedReadTimeout + 5*time.Second
	SeedPieceWait   = 30 * time.Second
)

// SeedEvery is the least time between the end of one seed read of a Ghost and the start
// of its next: a request sooner is answered busy (CodeBusy) at once, so that a Ghost asking
// in a loop costs Mirage a busy answer per request, not a read of up to 32 MiB each. A
// Ghost spaces its requests by it, and a retry after a busy answer waits at least as long.
const SeedEvery = time.Second

// HeaderSeedChunk marks a message of content in the answer to a seed read request: its
// value is the chunk's number, from 1. The final SeedAnswer has no such header.
// HeaderSeedSize, on every chunk, is the object's size: a Ghost whose answer stalls can
// say how much of it arrived.
const (
	HeaderSeedChunk = "Edge-Seed-Chunk"
	HeaderSeedSize  = "Edge-Seed-Size"
)

// DecodeSeedRequest reads a seed read request: not JSON is 1100, a field of the wrong type
// 1200, a missing object or max_size 1300. The object's name is checked by the reader
// (declarative.ValidateObjectName).
func DecodeSeedRequest(data []byte) (SeedRequest, error) {
	var req SeedRequest
	if err := decodeRequest(data, &req, "seed read request"); err != nil {
		return req, err
	}
	if req.Object == "" {
		return req, FieldError(CodeSemantic, "object", "missing: the name of an object of edge_seeds")
	}
	if req.MaxSize == 0 {
		return req, FieldError(CodeSemantic, "max_size", "missing: the most bytes the Ghost accepts, at least 1")
	}
	return req, nil
}
