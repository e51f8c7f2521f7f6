package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// knownKeys lists the koanf keys of a struct with the type each takes; a map field accepts
// any sub-key ("labels.*", of the map's element type).
func knownKeys(v any) map[string]reflect.Type {
	out := map[string]reflect.Type{}
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
			ft := f.Type
			if ft.Kind() == reflect.Pointer && ft.Elem().Kind() != reflect.Struct {
				// A pointer marks a key that may be unset (nil); its value is checked as
				// what it points to.
				ft = ft.Elem()
			}
			switch {
			case f.Type.Kind() == reflect.Struct && f.Type.String() != "time.Duration":
				walk(f.Type, key+".")
			case f.Type.Kind() == reflect.Map:
				out[key] = f.Type
				out[key+".*"] = f.Type.Elem()
			default:
				out[key] = ft
			}
		}
	}
	walk(t, "")
	return out
}

func keyList(known map[string]reflect.Type) string {
	var ks []string
	for k := range known {
		if !strings.HasSuffix(k, ".*") {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// typeOf returns the type a key takes, and whether the key is known.
func typeOf(known map[string]reflect.Type, key string) (reflect.Type, bool) {
	if t, ok := known[key]; ok {
		return t, true
	}
	t, ok := known[strings.SplitN(key, ".", 2)[0]+".*"]
	return t, ok
}

// checkFileValue says what is wrong with a value a TOML file gives a key of type t ("" when
// nothing is): TOML has types, so a number where text is expected is a mistake, not
// something to convert silently.
func checkFileValue(t reflect.Type, v any) string {
	if t == reflect.TypeOf(time.Duration(0)) {
		x, isString := v.(string)
		if !isString {
			return fmt.Sprintf("expected a duration with a unit (\"5s\", \"2m\"), got %s", describe(v))
		}
		if _, err := time.ParseDuration(x); err != nil {
			return fmt.Sprintf("expected a duration with a unit (\"5s\", \"2m\"), got %s", describe(v))
		}
		return ""
	}
	ok := true
	want := ""
	switch t.Kind() {
	case reflect.String:
		_, ok = v.(string)
		want = "a string (quoted)"
	case reflect.Bool:
		_, ok = v.(bool)
		want = "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		_, ok = v.(int64)
		want = "an integer"
	case reflect.Float32, reflect.Float64:
		switch v.(type) {
		case int64, float64:
		default:
			ok = false
		}
		want = "a number"
	case reflect.Slice:
		if t.Elem().Kind() != reflect.String {
			return ""
		}
		switch x := v.(type) {
		case string:
		case []any:
			for _, e := range x {
				if _, isString := e.(string); !isString {
					ok = false
				}
			}
		default:
			ok = false
		}
		want = "a list of strings"
	}
	if ok {
		return ""
	}
	return fmt.Sprintf("expected %s, got %s", want, describe(v))
}

func describe(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", x)
	case int64:
		return fmt.Sprintf("the integer %d", x)
	case float64:
		return fmt.Sprintf("the number %v", x)
	case bool:
		return fmt.Sprintf("%v", x)
	case []any:
		return "a list"
	case map[string]any:
		return "a table"
	default:
		return fmt.Sprintf("%v", x)
	}
}

// checkEnvValue says what is wrong with an environment variable's value for a key of type
// t ("" when nothing is): it is text, and must parse as what the key takes.
func checkEnvValue(t reflect.Type, v string) string {
	var err error
	switch t.Kind() {
	case reflect.Bool:
		_, err = strconv.ParseBool(v)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if t == reflect.TypeOf(time.Duration(0)) {
			_, err = time.ParseDuration(v)
		} else {
			_, err = strconv.ParseInt(v, 10, 64)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		_, err = strconv.ParseUint(v, 10, 64)
	case reflect.Float32, reflect.Float64:
		_, err = strconv.ParseFloat(v, 64)
	}
	if err == nil {
		return ""
	}
	return fmt.Sprintf("%q is not %s", v, kindName(t))
}

func kindName(t reflect.Type) string {
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		return "a duration with a unit, such as 5s or 2m"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number"
	default:
		return "an integer"
	}
}
