package main

import (
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// The usage lines of init and run (their --help, and the line a usage error quotes) name
// every flag they have, as the README's command summary does.
func TestUsageNamesEveryFlag(t *testing.T) {
	for _, c := range newRoot().Commands() {
		if c.Name() != "init" && c.Name() != "run" {
			continue
		}
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if f.Name != "help" && !strings.Contains(c.Use, "--"+f.Name) {
				t.Errorf("%s: usage %q does not name --%s", c.Name(), c.Use, f.Name)
			}
		})
	}
}
