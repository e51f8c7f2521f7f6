package declarative

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"github.com/edgectl/edgectl/bus"
)

// The byte-by-byte checks accept exactly what the patterns they stand for accept.
func TestNamesMatchTheirPatterns(t *testing.T) {
	checks := []struct {
		pattern string
		valid   func(string) bool
	}{
		{PatternVersion, validVersion},
		{`[A-Za-z0-9][A-Za-z0-9._-]{0,127}`, validFileName},
		{`[A-Za-z_][A-Za-z0-9_]{0,127}`, validEnvName},
		{PatternSHA256, validSHA256},
		{`[a-z][a-z0-9_]{0,63}`, bus.ValidArgName},
	}
	// Every byte in first and second place, the length limits, and random strings over an
	// alphabet with each set's characters, their neighbours and a multi-byte character.
	var samples []string
	for c := 0; c < 256; c++ {
		samples = append(samples, string([]byte{byte(c)}), "a"+string([]byte{byte(c)}), string([]byte{byte(c)})+"a")
	}
	for _, n := range []int{63, 64, 65, 127, 128, 129} {
		samples = append(samples, strings.Repeat("a", n), strings.Repeat("0", n), strings.Repeat("f", n))
	}
	samples = append(samples, "", "1.2.3", "v1.0+build", "run.sh", "PATH", "_X", "a\n", "é", "aé")
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []rune("aAzZ09_.-+/: \n\x00é{")
	for range 5000 {
		r := make([]rune, 1+rng.IntN(70))
		for i := range r {
			r[i] = alphabet[rng.IntN(len(alphabet))]
		}
		samples = append(samples, string(r))
	}
	for _, c := range checks {
		re := regexp.MustCompile("^(?:" + c.pattern + ")$")
		for _, s := range samples {
			if got, want := c.valid(s), re.MatchString(s); got != want {
				t.Errorf("%q against %s: check says %v, pattern %v", s, c.pattern, got, want)
			}
		}
	}
}
