// Package control is the control seed "ghost", which every Ghost hosts, even one
// configured with no seeds: it manages the seeds the Ghost hosts. seed.install fetches a
// declarative seed from the object store edge_seeds, verifies every SHA-256 digest,
// installs it under STATE/seeds/<id>/<version>/ and activates it; seed.remove removes
// one; seed.list and info describe the Ghost. Installed seeds are loaded again when the
// Ghost starts (those seed_allowlist or boot_seeds still name), and a Ghost's config may
// name seeds to install at boot.
//
// It owns STATE/seeds and nothing else: the seed format is package declarative's, the
// registry and registration are the Ghost's (it uses their public API).
package control
