package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// Harden makes every usage error of a command tree exit 2 (invalid input), as the contract
// asks: a wrong number of arguments, an unknown subcommand, or a command group run without
// one. Cobra reports these as plain errors, which would otherwise exit 1, a status scripts
// read as "finished but not satisfied". Call it once the tree is built.
func Harden(root *cobra.Command) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
			group(c, c == root)
		} else if c.Args != nil {
			check := c.Args
			c.Args = func(c *cobra.Command, args []string) error {
				if err := check(c, args); err != nil {
					return Invalid("%s: %s; usage: %s (see '%s --help')", c.CommandPath(), given(args), c.UseLine(), c.CommandPath())
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// given describes the arguments a command refused, in edgectl's words rather than
// cobra's; the usage line beside it says what was expected.
func given(args []string) string {
	if len(args) == 0 {
		return "got no arguments"
	}
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	noun := "arguments"
	if len(args) == 1 {
		noun = "argument"
	}
	return fmt.Sprintf("got %d %s (%s)", len(args), noun, strings.Join(quoted, " "))
}

// group makes a command that only holds subcommands refuse an unknown one, and being run
// without one: the root prints its help on stderr, a group one line; both exit 2, as any
// usage error does.
func group(c *cobra.Command, isRoot bool) {
	var names []string
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() {
			names = append(names, sub.Name())
		}
	}
	c.Args = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return Invalid("unknown command %q for %q: use one of %s (see '%s --help')", args[0], c.CommandPath(), strings.Join(names, ", "), c.CommandPath())
		}
		return nil
	}
	c.RunE = func(c *cobra.Command, _ []string) error {
		if isRoot {
			c.SetOut(c.ErrOrStderr())
			if err := c.Help(); err != nil {
				return err
			}
			return Silent(ExitInvalid)
		}
		return Invalid("%s needs a command: one of %s (see '%s --help')", c.CommandPath(), strings.Join(names, ", "), c.CommandPath())
	}
}

// Required returns an invalid-input error when a required flag is empty. Cobra's own
// check (MarkFlagRequired) runs before any hook and its error would exit 1.
func Required(name, value string) error {
	if value == "" {
		return Invalid("--%s is required", name)
	}
	return nil
}
