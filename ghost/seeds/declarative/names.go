package declarative

import "strings"

// The name grammars of specs and install args, checked byte by byte: package-level
// regexps would be compiled at every start of every Ghost (about 140 KB of heap kept),
// whether or not it ever installs a seed. names_test.go checks them against the patterns
// they stand for.

const (
	letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	digits  = "0123456789"
	alnum   = letters + digits
	hexLow  = "0123456789abcdef"
)

// validVersion: [0-9A-Za-z][0-9A-Za-z._+-]{0,63} (PatternVersion).
func validVersion(v string) bool { return isName(v, 64, alnum, alnum+"._+-") }

// validFileName: [A-Za-z0-9][A-Za-z0-9._-]{0,127}.
func validFileName(name string) bool { return isName(name, 128, alnum, alnum+"._-") }

// validEnvName: [A-Za-z_][A-Za-z0-9_]{0,127}.
func validEnvName(name string) bool { return isName(name, 128, letters+"_", alnum+"_") }

// validSHA256: [0-9a-f]{64} (PatternSHA256).
func validSHA256(s string) bool { return len(s) == 64 && isName(s, 64, hexLow, hexLow) }

// isName reports whether s has 1 to max bytes, its first in the set first and every other
// in the set rest (ASCII sets, so a multi-byte character never matches).
func isName(s string, max int, first, rest string) bool {
	if s == "" || len(s) > max || strings.IndexByte(first, s[0]) < 0 {
		return false
	}
	for i := 1; i < len(s); i++ {
		if strings.IndexByte(rest, s[i]) < 0 {
			return false
		}
	}
	return true
}
