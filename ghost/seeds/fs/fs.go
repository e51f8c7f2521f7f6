package fs

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"github.com/edgectl/edgectl/ghost/seeds/internal/result"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/edgectl/edgectl/bus"
)

// ID is the seed id of the fs seed.
const ID = "seed.fs"

// MaxContentSize is the largest content written, in bytes: the content param's max_bytes
// (a Go regexp cannot repeat more than 1000 times, so the pattern cannot say it), checked
// again in code.
const MaxContentSize = 64 << 10

// Result statuses.
const (
	StatusOK       = result.StatusOK
	StatusFailed   = result.StatusFailed
	StatusNotFound = "not_found"
)

// ErrFileNotFound is returned (wrapped) by read for a path where no file is.
var ErrFileNotFound = errors.New("file not found")

// tmpMark is in the name of every temporary file of an atomic write. It holds '~', which
// no accepted path may contain, so a temporary file never collides with a user's file and
// list leaves out any that a crash left behind.
const tmpMark = ".seed-fs-tmp~"

// Seed is seed.fs. It is safe for concurrent use; concurrent writes of one path leave one
// of the contents whole, never a mix.
type Seed struct {
	root string // absolute, symbolic links resolved
}

// New returns a seed confined to root, creating root (mode 0700) if it is missing.
func New(root string) (*Seed, error) {
	if root == "" {
		return nil, errors.New("seed.fs: root directory is empty")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("seed.fs: root: %w", err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("seed.fs: create root: %w", err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return nil, fmt.Errorf("seed.fs: root: %w", err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return nil, fmt.Errorf("seed.fs: root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("seed.fs: root %s is not a directory", real)
	}
	return &Seed{root: real}, nil
}

// Root returns the directory the seed is confined to, absolute and resolved.
func (s *Seed) Root() string { return s.root }

// Info declares the seed and its operations.
func (s *Seed) Info() bus.SeedInfo {
	path := bus.ParamInfo{Name: "path", Required: true, Pattern: pathPattern, Description: "relative path under the state directory: elements of A-Z a-z 0-9 . _ - separated by /, no . or .. element"}
	return bus.SeedInfo{
		ID:          ID,
		Name:        "FS",
		Description: "Files under the Ghost's state directory; nothing outside it can be reached.",
		Operations: []bus.OperationInfo{
			{
				Name:        "write",
				Description: `Write content to path atomically (mode 0600), creating parent directories. Stdout is JSON {"path":...,"bytes":<content length>}.`,
				Idempotent:  true,
				Params: []bus.ParamInfo{
					path,
					{Name: "content", Required: true, Pattern: `(?s).*`, MaxBytes: MaxContentSize, Description: "any text of at most 65536 bytes"},
				},
			},
			{
				Name:        "read",
				Description: `Return the content of the file at path, as is, on stdout. A missing file fails with status "not_found".`,
				Idempotent:  true,
				Params:      []bus.ParamInfo{path},
			},
			{
				Name:        "delete",
				Description: `Remove the file at path; removing a missing file succeeds. Stdout is JSON {"path":...,"deleted":<whether it was there>}.`,
				Idempotent:  true,
				Params:      []bus.ParamInfo{path},
			},
			{
				Name:        "list",
				Description: "List the regular files whose relative path starts with prefix (all without one). Stdout is a JSON array of relative paths, sorted.",
				Idempotent:  true,
				Params: []bus.ParamInfo{
					{Name: "prefix", Pattern: prefixPattern, Description: "keep only paths starting with this"},
				},
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
		prefix := req.Args["prefix"]
		if len(prefix) > MaxPathLen {
			return result.Failed(StatusFailed, bus.FieldError(bus.CodeSemantic, "args.prefix", "is %d bytes, at most %d are allowed", len(prefix), MaxPathLen))
		}
		return s.list(ctx, prefix)
	case "write", "read", "delete":
	default:
		return result.Failed(StatusFailed, bus.FieldError(bus.CodeSemantic, "operation", "%s has no operation %q", ID, req.Operation))
	}
	rel := req.Args["path"]
	if err := checkPath(rel); err != nil {
		return result.Failed(StatusFailed, err)
	}
	if err := s.confine(rel); err != nil {
		return result.Failed(StatusFailed, err)
	}
	root, err := os.OpenRoot(s.root)
	if err != nil {
		return result.Failed(StatusFailed, err)
	}
	defer root.Close()
	name := filepath.FromSlash(rel)
	switch req.Operation {
	case "write":
		content, present := req.Args["content"]
		if !present {
			return result.Failed(StatusFailed, bus.FieldError(bus.CodeSemantic, "args.content", "required by %s write but missing", ID))
		}
		if len(content) > MaxContentSize {
			return result.Failed(StatusFailed, bus.FieldError(bus.CodeSemantic, "args.content", "is %d bytes, at most %d are allowed", len(content), MaxContentSize))
		}
		return write(root, rel, name, content)
	case "read":
		return read(root, rel, name)
	default: // delete
		return remove(root, rel, name)
	}
}

// write replaces the file by renaming a complete temporary file over it, so a reader or a
// crash sees the old content or the new, never part of it.
func write(root *os.Root, rel, name, content string) (bus.Result, error) {
	if fi, err := root.Lstat(name); err == nil && fi.IsDir() {
		return result.Failed(StatusFailed, fmt.Errorf("write %s: is a directory; write replaces files", rel))
	}
	dir := filepath.Dir(name)
	tmp := filepath.Join(dir, tmpMark+rand.Text())
	var f *os.File
	// A delete removing the parents it left empty may take the directory between its
	// making and the temporary file's: made again, a few times.
	for attempt := 0; ; attempt++ {
		err := root.MkdirAll(dir, 0o700)
		if err == nil {
			if f, err = root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
				break
			}
		}
		// The race shows as the directory missing, or (MkdirAll finding it made, then
		// gone) existing.
		raced := errors.Is(err, iofs.ErrNotExist) || errors.Is(err, iofs.ErrExist)
		if !raced || attempt == 9 {
			var perr *iofs.PathError
			if errors.As(err, &perr) { // name the path, not the temporary file
				err = perr.Err
			}
			return result.Failed(StatusFailed, fmt.Errorf("write %s: %w", rel, err))
		}
	}
	_, err := f.WriteString(content)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, name)
	}
	if err != nil {
		_ = root.Remove(tmp)
		var lerr *os.LinkError
		if errors.As(err, &lerr) { // the rename: name the path, not the temporary file
			err = lerr.Err
		}
		return result.Failed(StatusFailed, fmt.Errorf("write %s: %w", rel, err))
	}
	// Make the rename durable; a failure here leaves the new content in place, so it is
	// not reported.
	if d, err := root.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return result.JSON(struct {
		Path  string `json:"path"`
		Bytes int    `json:"bytes"`
	}{rel, len(content)})
}

func read(root *os.Root, rel, name string) (bus.Result, error) {
	// Stat first: opening a FIFO or a device could block or have side effects.
	fi, err := root.Stat(name)
	if errors.Is(err, iofs.ErrNotExist) {
		return result.Failed(StatusNotFound, fmt.Errorf("read %s: %w", rel, ErrFileNotFound))
	}
	if err != nil {
		return result.Failed(StatusFailed, fmt.Errorf("read %s: %w", rel, err))
	}
	if fi.IsDir() {
		return result.Failed(StatusFailed, fmt.Errorf("read %s: is a directory; list shows what it holds", rel))
	}
	if !fi.Mode().IsRegular() {
		return result.Failed(StatusFailed, fmt.Errorf("read %s: not a regular file (%s)", rel, fi.Mode().Type()))
	}
	f, err := root.Open(name)
	if err != nil {
		return result.Failed(StatusFailed, fmt.Errorf("read %s: %w", rel, err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, bus.MaxOutput+1))
	if err != nil {
		return result.Failed(StatusFailed, fmt.Errorf("read %s: %w", rel, err))
	}
	out, cut := bus.Cut(string(data), bus.MaxOutput)
	return bus.Result{Status: StatusOK, Stdout: out, Truncated: cut}, nil
}

func remove(root *os.Root, rel, name string) (bus.Result, error) {
	fi, err := root.Lstat(name)
	found := err == nil
	switch {
	case errors.Is(err, iofs.ErrNotExist):
	case err != nil:
		return result.Failed(StatusFailed, fmt.Errorf("delete %s: %w", rel, err))
	case fi.IsDir():
		return result.Failed(StatusFailed, fmt.Errorf("delete %s: is a directory; delete removes files", rel))
	default:
		if err := root.Remove(name); err != nil && !errors.Is(err, iofs.ErrNotExist) {
			return result.Failed(StatusFailed, fmt.Errorf("delete %s: %w", rel, err))
		}
		// Remove the parents left empty, so that a later write of a parent's path as a file
		// is not blocked by a directory nobody can see in list. Remove fails on the first
		// parent that is not empty, which ends the walk; so does a parent that is a
		// symbolic link (to a directory within the root), which Remove would unlink
		// whatever its target holds.
		for dir := filepath.Dir(name); dir != "."; dir = filepath.Dir(dir) {
			if fi, err := root.Lstat(dir); err != nil || !fi.IsDir() || root.Remove(dir) != nil {
				break
			}
		}
	}
	return result.JSON(struct {
		Path    string `json:"path"`
		Deleted bool   `json:"deleted"`
	}{rel, found})
}

func (s *Seed) list(ctx context.Context, prefix string) (bus.Result, error) {
	root, err := os.OpenRoot(s.root)
	if err != nil {
		return result.Failed(StatusFailed, err)
	}
	defer root.Close()
	var paths []string
	err = iofs.WalkDir(root.FS(), ".", func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() {
			// Skip a directory none of whose files can start with prefix.
			if p != "." && !strings.HasPrefix(p+"/", prefix) && !strings.HasPrefix(prefix, p+"/") {
				return iofs.SkipDir
			}
			return nil
		}
		// Leave out what read could not name: temporary files, names outside the pattern.
		if d.Type().IsRegular() && strings.HasPrefix(p, prefix) && checkPath(p) == nil {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return result.Failed(StatusFailed, fmt.Errorf("list: %w", err))
	}
	// WalkDir visits in lexical order of each directory, which is not the order of full
	// paths ("a.txt" < "a/b" fails as a string comparison), so sort.
	slices.Sort(paths)
	out, cut, err := result.Array(paths, bus.MaxOutput)
	if err != nil {
		return result.Failed(StatusFailed, err)
	}
	return bus.Result{Status: StatusOK, Stdout: out, Truncated: cut}, nil
}
