package subjects

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/nats-io/nuid"
)

// ErrInvalidID is wrapped by every identifier validation error.
var ErrInvalidID = errors.New("invalid identifier")

// Reason returns a validation error's message without the ErrInvalidID prefix, to follow
// a field or flag name.
func Reason(err error) string {
	return strings.TrimPrefix(err.Error(), ErrInvalidID.Error()+": ")
}

const maxIDLen = 64

// ValidateGhostID checks a ghost_id: 1-64 characters of A-Z a-z 0-9 - _, starting with a
// letter or digit. A ghost_id is one subject token, so a dot is refused by name.
func ValidateGhostID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: ghost id is empty", ErrInvalidID)
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("%w: ghost id %q is %d characters, at most %d are allowed", ErrInvalidID, id, len(id), maxIDLen)
	}
	if strings.Contains(id, ".") {
		return fmt.Errorf("%w: ghost id %q contains a dot; a ghost id is one NATS subject token, use - or _ instead", ErrInvalidID, id)
	}
	if !isAlnum(id[0]) {
		return fmt.Errorf("%w: ghost id %q must start with a letter or digit", ErrInvalidID, id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAlnum(c) && c != '-' && c != '_' {
			return fmt.Errorf("%w: ghost id %q contains %q; allowed are A-Z a-z 0-9 - _", ErrInvalidID, id, runeAt(id, i))
		}
	}
	return nil
}

// ValidateSeedID checks a seed id: 1-64 characters of lowercase a-z 0-9 . _ -.
func ValidateSeedID(id string) error { return validateLower("seed id", id) }

// ValidateOperation checks an operation name: 1-64 characters of lowercase a-z 0-9 _ . -.
func ValidateOperation(name string) error { return validateLower("operation", name) }

func validateLower(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalidID, what)
	}
	if len(s) > maxIDLen {
		return fmt.Errorf("%w: %s %q is %d characters, at most %d are allowed", ErrInvalidID, what, s, len(s), maxIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '.' && c != '_' && c != '-' {
			return fmt.Errorf("%w: %s %q contains %q; allowed are lowercase a-z 0-9 . _ -", ErrInvalidID, what, s, runeAt(s, i))
		}
	}
	return nil
}

// ValidateToken checks a generated identifier (intent_id, command_id, execution_id,
// event_id, message_id): 1-128 characters of A-Z a-z 0-9 - _, safe as one subject token.
func ValidateToken(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalidID, what)
	}
	if len(s) > 2*maxIDLen {
		return fmt.Errorf("%w: %s is %d characters, at most %d are allowed", ErrInvalidID, what, len(s), 2*maxIDLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '-' && c != '_' {
			return fmt.Errorf("%w: %s %q contains %q; allowed are A-Z a-z 0-9 - _", ErrInvalidID, what, s, runeAt(s, i))
		}
	}
	return nil
}

// ValidateTraceID checks a W3C trace-id: 32 lowercase hex characters, not all zero.
func ValidateTraceID(s string) error {
	if len(s) != 32 {
		return fmt.Errorf("%w: trace_id must be 32 lowercase hex characters, got %d characters", ErrInvalidID, len(s))
	}
	zero := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w: trace_id must be lowercase hex, found %q", ErrInvalidID, runeAt(s, i))
		}
		if c != '0' {
			zero = false
		}
	}
	if zero {
		return fmt.Errorf("%w: trace_id must not be all zeros", ErrInvalidID)
	}
	return nil
}

// runeAt returns the character that starts at byte i (or the byte's replacement), so an
// error names the character the user typed, not one byte of it.
func runeAt(s string, i int) rune {
	r, _ := utf8.DecodeRuneInString(s[i:])
	return r
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// Prefixes of generated identifiers, so that an id read in a log says what it names.
const (
	PrefixIntent    = "int"
	PrefixCommand   = "cmd"
	PrefixExecution = "exe"
	PrefixEvent     = "evt"
	PrefixMessage   = "msg"
	PrefixInstance  = "ins"
)

// NewID returns a unique, subject-token safe identifier such as int_Xb3...; the suffix is a
// NATS nuid (22 base62 characters).
func NewID(prefix string) string { return prefix + "_" + nuid.Next() }

// NewTraceID returns a random W3C trace-id.
func NewTraceID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on supported platforms; fall back to a nuid-derived id.
		return hex.EncodeToString([]byte(nuid.Next())[:16])
	}
	return hex.EncodeToString(b[:])
}

// NewSpanID returns a random W3C parent-id (16 lowercase hex characters).
func NewSpanID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
