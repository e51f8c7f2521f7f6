package fs

import (
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/edgectl/edgectl/bus"
)

// MaxPathLen is the longest path accepted, in bytes.
const MaxPathLen = 512

const (
	pathPattern   = `[A-Za-z0-9._/-]{1,512}`
	prefixPattern = `[A-Za-z0-9._/-]{0,512}`
)

// checkPath refuses a path that is not a plain relative path under the root. The Ghost
// already matched the declared pattern; this does not rely on it, since a pattern is easy to
// loosen and a path is where an escape would start.
func checkPath(p string) error {
	refuse := func(format string, args ...any) error {
		return bus.FieldError(bus.CodeSemantic, "args.path", format, args...)
	}
	switch {
	case p == "":
		return refuse("is empty")
	case len(p) > MaxPathLen:
		return refuse("is %d bytes, at most %d are allowed", len(p), MaxPathLen)
	case strings.ContainsRune(p, 0):
		return refuse("contains a NUL byte")
	case strings.Contains(p, `\`):
		return refuse("contains a backslash; separate elements with /")
	case strings.HasPrefix(p, "/") || filepath.IsAbs(p):
		return refuse("%q is absolute; give a path relative to the state directory", p)
	}
	for _, el := range strings.Split(p, "/") {
		switch el {
		case "":
			return refuse("%q has an empty element (a leading, trailing or doubled /)", p)
		case ".", "..":
			return refuse("%q has a %q element; give a plain relative path", p, el)
		}
	}
	for i := 0; i < len(p); i++ {
		if !pathByte(p[i]) {
			return refuse("%q contains %q; allowed are A-Z a-z 0-9 . _ / -", p, p[i])
		}
	}
	return nil
}

func pathByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '/' || c == '-'
}

// confine refuses a path that leads out of the root through a symbolic link: the path
// itself if it exists, else its nearest existing parent, must resolve to a place under the
// root. A dangling symbolic link is refused too, since where it leads cannot be resolved.
// os.Root enforces the same confinement again when the operation runs, closing the window
// between this check and the use.
func (s *Seed) confine(rel string) error {
	full := filepath.Join(s.root, filepath.FromSlash(rel))
	for p := full; ; p = filepath.Dir(p) {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			if !within(s.root, real) {
				return bus.FieldError(bus.CodeSemantic, "args.path", "%q leads outside the state directory through a symbolic link", rel)
			}
			return nil
		}
		// The errors name no host path: not the state directory, nor where a link leads.
		if fi, lerr := os.Lstat(p); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
			return bus.FieldError(bus.CodeSemantic, "args.path", "%q goes through a symbolic link that cannot be resolved", rel)
		}
		if p == s.root || filepath.Dir(p) == p {
			var perr *iofs.PathError
			if errors.As(err, &perr) {
				err = perr.Err
			}
			return fmt.Errorf("resolve %q: %w", rel, err)
		}
	}
}

// within reports whether p is root or under it; both are absolute and resolved.
func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}
