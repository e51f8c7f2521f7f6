// Package seeds assembles the built-in seeds a Ghost can host: seed.flow, seed.kv,
// seed.fs and seed.system. Each lives in its own subpackage; this one only names them and
// builds a registry from a list of ids.
package seeds

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/edgectl/edgectl/ghost"
	"github.com/edgectl/edgectl/ghost/seeds/flow"
	"github.com/edgectl/edgectl/ghost/seeds/fs"
	"github.com/edgectl/edgectl/ghost/seeds/kv"
	"github.com/edgectl/edgectl/ghost/seeds/system"
)

// Built-in seed ids.
const (
	Flow   = "seed.flow"
	KV     = "seed.kv"
	FS     = "seed.fs"
	System = "seed.system"
)

// All lists every built-in seed id.
var All = []string{Flow, FS, KV, System}

// Registry builds a registry hosting the named built-in seeds. stateDir is the Ghost's
// state directory: seed.fs is confined to its "files" subdirectory.
func Registry(ids []string, stateDir string) (*ghost.Registry, error) {
	reg := ghost.NewRegistry()
	for _, id := range ids {
		var s ghost.Seed
		switch id {
		case Flow:
			s = flow.New()
		case KV:
			s = kv.New()
		case FS:
			f, err := fs.New(filepath.Join(stateDir, "files"))
			if err != nil {
				return nil, err // fs.New names seed.fs
			}
			s = f
		case System:
			s = system.New(stateDir)
		default:
			return nil, fmt.Errorf("unknown built-in seed %q (built-in seeds: %s)", id, strings.Join(All, ", "))
		}
		if err := reg.Add(s); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// Parse reads a seed list as given on the command line: "all", "none", or ids separated by
// commas. It returns the ids sorted and without duplicates.
func Parse(list string) ([]string, error) {
	switch strings.TrimSpace(list) {
	case "", "all":
		return append([]string(nil), All...), nil
	case "none":
		return []string{}, nil
	}
	seen := map[string]bool{}
	var out []string
	for _, p := range strings.Split(list, ",") {
		id := strings.TrimSpace(p)
		if id == "" || seen[id] {
			continue
		}
		if !known(id) {
			return nil, fmt.Errorf("unknown built-in seed %q (built-in seeds: %s)", id, strings.Join(All, ", "))
		}
		seen[id] = true
		out = append(out, id)
	}
	sort.Strings(out)
	return out, nil
}

func known(id string) bool {
	for _, k := range All {
		if k == id {
			return true
		}
	}
	return false
}
