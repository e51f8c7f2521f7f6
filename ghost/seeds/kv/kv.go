package kv

import (
	"context"
	"errors"
	"fmt"
	"github.com/edgectl/edgectl/ghost/seeds/internal/result"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/edgectl/edgectl/bus"
)

// ID is the seed id of the kv seed.
const ID = "seed.kv"

// MaxValueSize is the largest value stored, in bytes: the value param's max_bytes (a Go
// regexp cannot repeat more than 1000 times, so the pattern cannot say it), checked again
// in code.
const MaxValueSize = 64 << 10

// MaxKeys and MaxBytes bound what the store holds in memory (keys and values): a put of a
// new key, or one growing the store, past either is refused, nothing stored.
const (
	MaxKeys  = 10_000
	MaxBytes = 64 << 20
)

// Result statuses.
const (
	StatusOK       = result.StatusOK
	StatusFailed   = result.StatusFailed
	StatusNotFound = "not_found"
)

// ErrKeyNotFound is returned (wrapped) by get for a key that is not stored.
var ErrKeyNotFound = errors.New("key not found")

// ErrNotInteger is returned (wrapped) by incr when the stored value is not a decimal integer.
var ErrNotInteger = errors.New("value is not an integer")

const (
	keyPattern    = `[A-Za-z0-9._/-]{1,256}`
	prefixPattern = `[A-Za-z0-9._/-]{0,256}`
	valuePattern  = `(?s).*`
)

// Seed is seed.kv. It is safe for concurrent use.
type Seed struct {
	mu    sync.Mutex
	data  map[string]string
	bytes int // of every key and value held
}

// New returns an empty kv seed.
func New() *Seed { return &Seed{data: map[string]string{}} }

// Value returns the value stored under key, for tests that inspect the store.
func (s *Seed) Value(key string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.data[key]
	return v, ok
}

// Info declares the seed and its operations.
func (s *Seed) Info() bus.SeedInfo {
	key := bus.ParamInfo{Name: "key", Required: true, Pattern: keyPattern, Description: "1-256 characters of A-Z a-z 0-9 . _ / -"}
	return bus.SeedInfo{
		ID:          ID,
		Name:        "KV",
		Description: "An in-memory key/value store, lost when the Ghost stops; it holds at most 10000 keys and 64 MiB.",
		Operations: []bus.OperationInfo{
			{
				Name:        "put",
				Description: `Store value under key, replacing any value. Stdout is JSON {"key":...,"bytes":<value length>}.`,
				Idempotent:  true,
				Params: []bus.ParamInfo{
					key,
					{Name: "value", Required: true, Pattern: valuePattern, MaxBytes: MaxValueSize, Description: "any text of at most 65536 bytes"},
				},
			},
			{
				Name:        "get",
				Description: `Return the value stored under key, as is, on stdout. A missing key fails with status "not_found".`,
				Idempotent:  true,
				Params:      []bus.ParamInfo{key},
			},
			{
				Name:        "delete",
				Description: `Remove key; removing a missing key succeeds. Stdout is JSON {"key":...,"deleted":<whether it was there>}.`,
				Idempotent:  true,
				Params:      []bus.ParamInfo{key},
			},
			{
				Name:        "list",
				Description: "List the stored keys that start with prefix (all keys without one). Stdout is a JSON array of keys, sorted.",
				Idempotent:  true,
				Params: []bus.ParamInfo{
					{Name: "prefix", Pattern: prefixPattern, Description: "keep only keys starting with this"},
				},
			},
			{
				Name:        "incr",
				Description: "Add 1 to the decimal integer stored under key (a missing key counts as 0), store it and return the new value on stdout. Not idempotent.",
				Idempotent:  false,
				Params:      []bus.ParamInfo{key},
			},
		},
	}
}

// Execute runs one operation.
func (s *Seed) Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error) {
	if req == nil {
		return result.Failed(StatusFailed, bus.Errorf(bus.CodeSemantic, "no seed.execute given"))
	}
	if err := ctx.Err(); err != nil {
		return result.Failed(StatusFailed, err)
	}
	switch req.Operation {
	case "list":
		return s.list(req.Args["prefix"])
	case "put", "get", "delete", "incr":
	default:
		return result.Failed(StatusFailed, bus.FieldError(bus.CodeSemantic, "operation", "%s has no operation %q", ID, req.Operation))
	}
	key := req.Args["key"]
	if key == "" {
		return result.Failed(StatusFailed, bus.FieldError(bus.CodeSemantic, "args.key", "required by %s %s but missing", ID, req.Operation))
	}
	switch req.Operation {
	case "put":
		return s.put(key, req.Args)
	case "get":
		return s.get(key)
	case "delete":
		return s.delete(key)
	default: // incr
		return s.incr(key)
	}
}

func (s *Seed) put(key string, args map[string]string) (bus.Result, error) {
	value, present := args["value"]
	if !present {
		return result.Failed(StatusFailed, bus.FieldError(bus.CodeSemantic, "args.value", "required by %s put but missing", ID))
	}
	if len(value) > MaxValueSize {
		return result.Failed(StatusFailed, bus.FieldError(bus.CodeSemantic, "args.value", "is %d bytes, at most %d are allowed", len(value), MaxValueSize))
	}
	s.mu.Lock()
	old, found := s.data[key]
	grown := s.bytes + len(value) - len(old)
	if !found {
		grown += len(key)
	}
	switch {
	case !found && len(s.data) >= MaxKeys:
		s.mu.Unlock()
		return result.Failed(StatusFailed, fmt.Errorf("%s holds %d keys, its most: delete some first", ID, MaxKeys))
	case grown > MaxBytes && grown > s.bytes:
		s.mu.Unlock()
		return result.Failed(StatusFailed, fmt.Errorf("%s holds %d bytes; storing this value would take it past its most, %d: delete some first", ID, s.bytes, MaxBytes))
	}
	s.data[key], s.bytes = value, grown
	s.mu.Unlock()
	return result.JSON(struct {
		Key   string `json:"key"`
		Bytes int    `json:"bytes"`
	}{key, len(value)})
}

func (s *Seed) get(key string) (bus.Result, error) {
	v, found := s.Value(key)
	if !found {
		return result.Failed(StatusNotFound, fmt.Errorf("%w: %q", ErrKeyNotFound, key))
	}
	return result.OK(v), nil
}

func (s *Seed) delete(key string) (bus.Result, error) {
	s.mu.Lock()
	old, found := s.data[key]
	if found {
		delete(s.data, key)
		s.bytes -= len(key) + len(old)
	}
	s.mu.Unlock()
	return result.JSON(struct {
		Key     string `json:"key"`
		Deleted bool   `json:"deleted"`
	}{key, found})
}

func (s *Seed) list(prefix string) (bus.Result, error) {
	s.mu.Lock()
	keys := make([]string, 0, len(s.data))
	for k := range s.data {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	s.mu.Unlock()
	sort.Strings(keys)
	out, cut, err := result.Array(keys, bus.MaxOutput)
	if err != nil {
		return result.Failed(StatusFailed, err)
	}
	return bus.Result{Status: StatusOK, Stdout: out, Truncated: cut}, nil
}

func (s *Seed) incr(key string) (bus.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	v, found := s.data[key]
	if found {
		var err error
		if n, err = strconv.ParseInt(v, 10, 64); err != nil {
			return result.Failed(StatusFailed, fmt.Errorf("incr %q: %w: %.64q", key, ErrNotInteger, v))
		}
	} else if len(s.data) >= MaxKeys {
		return result.Failed(StatusFailed, fmt.Errorf("%s holds %d keys, its most: delete some first", ID, MaxKeys))
	}
	if n == math.MaxInt64 {
		return result.Failed(StatusFailed, fmt.Errorf("incr %q: %d is the largest value incr can hold", key, n))
	}
	n++
	next := strconv.FormatInt(n, 10)
	s.bytes += len(next) - len(v)
	if !found {
		s.bytes += len(key)
	}
	s.data[key] = next
	return result.OK(next), nil
}
