// Package cli holds what both command-line programs share: exit codes, the mapping of
// errors to them, logger set-up and client connections. It owns no runtime behaviour.
package cli
