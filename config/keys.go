package config

import (
	"reflect"
	"sort"
	"strings"
)

// knownKeys lists the koanf keys of a struct; a map field accepts any sub-key ("labels.*").
func knownKeys(v any) map[string]bool {
	out := map[string]bool{}
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := strings.Split(f.Tag.Get("koanf"), ",")[0]
			if name == "" || name == "-" {
				continue
			}
			key := prefix + name
			switch {
			case f.Type.Kind() == reflect.Struct && f.Type.String() != "time.Duration":
				walk(f.Type, key+".")
			case f.Type.Kind() == reflect.Map:
				out[key] = true
				out[key+".*"] = true
			default:
				out[key] = true
			}
		}
	}
	walk(t, "")
	return out
}

func keyList(known map[string]bool) string {
	var ks []string
	for k := range known {
		if !strings.HasSuffix(k, ".*") {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}
