package mirage

import (
	"errors"
	"strings"
	"sync/atomic"

	"github.com/nats-io/nats.go/jetstream"
)

// A JetStream store with no room left (the server's max_file_store or an account's limit
// reached, or a stream capped by an operator with discard new) refuses every write at once
// with an API error. A fresh intent's commands leave before its record is stored
// (handleIssue): on such a store its Ghosts may get and run them live, but neither the
// record, nor the commands for Ghosts that are offline, nor its reports are stored, and a
// Mirage that stops before the store has room again forgets the intent it accepted. So once
// the store has refused a write for want of room, intake stores a fresh intent's record
// before anything else (accept): refused so, the issue is refused (1501, busy: retry later)
// and nothing is sent; stored, the store has room again, and intake goes back to sending the
// commands first.

// storeRoom says whether the store was last seen refusing writes for want of room.
type storeRoom struct{ full atomic.Bool }

// noted records what a write into the store answered: a refusal for want of room marks the
// store full, a write it took (err nil) marks it as having room. Other errors (a timeout, a
// leader change) say nothing about room and change nothing.
func (s *storeRoom) noted(err error) {
	switch {
	case err == nil:
		s.full.Store(false)
	case noRoom(err):
		s.full.Store(true)
	}
}

// refusing reports whether the last write that said anything about room was refused.
func (s *storeRoom) refusing() bool { return s.full.Load() }

// Server error codes of a write refused for want of room (nats-server's
// jetstream_errors.json).
const (
	errCodeAccountResources jetstream.ErrorCode = 10002 // resource limits exceeded for account
	errCodeInsufficient     jetstream.ErrorCode = 10023 // insufficient resources (the server's store)
	errCodeStorageExceeded  jetstream.ErrorCode = 10047 // insufficient storage resources available
	errCodeStoreFailed      jetstream.ErrorCode = 10077 // a store failure, its reason in the description
)

// noRoom reports whether err is the store's refusal of a write for want of room.
func noRoom(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case errCodeAccountResources, errCodeInsufficient, errCodeStorageExceeded:
		return true
	case errCodeStoreFailed:
		// A stream at its cap with discard new: "maximum bytes exceeded", "maximum
		// messages exceeded", "maximum messages per subject exceeded".
		return strings.Contains(apiErr.Description, "maximum ")
	}
	return false
}
