// Package declarative is the declarative seed: a seed defined by a TOML spec instead of Go
// code, pushed to Ghosts over NATS. It owns the spec format (spec.go: parsing and
// validation), the rendering of an operation's argv template (render.go: a {{param}}
// value always stays inside one argument; no shell, ever), running the program
// (seed.go), and the bundle of objects a spec travels as in the object store edge_seeds
// (bundle.go: object names, SHA-256 digests, publishing and fetching).
//
// It does not own installation on a Ghost (where files go, activation, persistence):
// that is the control seed's, ghost/seeds/control. docs/seeds.md defines the format.
package declarative
