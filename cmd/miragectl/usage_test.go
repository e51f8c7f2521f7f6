package main

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// The usage line of 'up' (its --help, and the line a usage error quotes) names every flag
// it has, as the README's command summary does: every one of them is up's own.
func TestUpUsageNamesEveryFlag(t *testing.T) {
	c := newUp()
	c.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" && !strings.Contains(c.Use, "--"+f.Name) {
			t.Errorf("usage %q does not name --%s", c.Use, f.Name)
		}
	})
}
