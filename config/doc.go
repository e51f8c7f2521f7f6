// Package config loads configuration once, at the edge: a TOML file, then EDGE_…
// environment variables, then command-line flags, each overriding the one before
// (github.com/knadh/koanf/v2). It decodes into the plain structs the runtimes take and
// reports errors that name the file, the key and what is wrong.
//
// config owns no runtime behaviour.
package config
