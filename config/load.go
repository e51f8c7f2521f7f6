package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
)

// EnvPrefix prefixes the environment variables that override file keys: EDGE_STATE_DIR
// sets state_dir, EDGE_LABELS__ROLE sets labels.role.
const EnvPrefix = "EDGE_"

// Error is a configuration error: where it is, which key, and what is wrong.
type Error struct {
	Source string // file path, "environment" or "flags"
	Key    string
	Reason string
}

func (e *Error) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("config %s: %s", e.Source, e.Reason)
	}
	return fmt.Sprintf("config %s: key %q: %s", e.Source, e.Key, e.Reason)
}

// Where names where the value of key that a check refused came from, for a config error:
// the EDGE_ environment variable that set it (EDGE_POLICY for policy, EDGE_LABELS__ROLE
// for labels.role, EDGE_LABELS for any label), else path. key may carry an index
// ("seeds[2]").
func Where(path, key string) string {
	if i := strings.IndexByte(key, '['); i >= 0 {
		key = key[:i]
	}
	for k := key; k != ""; {
		name := EnvPrefix + strings.ToUpper(strings.ReplaceAll(k, ".", "__"))
		if os.Getenv(name) != "" {
			return "environment variable " + name
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return path
}

// Load fills out from path (optional when required is false), the environment, and the
// flags that were set on the command line (flagKeys maps flag name → config key).
func Load(path string, required bool, flags *pflag.FlagSet, flagKeys map[string]string, out any) error {
	k := koanf.New(".")
	source := path
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			if required || !errors.Is(err, fs.ErrNotExist) {
				return &Error{Source: path, Reason: "cannot read: " + err.Error()}
			}
		} else if err := k.Load(file.Provider(path), toml.Parser()); err != nil {
			return &Error{Source: path, Reason: "not valid TOML: " + err.Error()}
		}
	}
	known := knownKeys(out)
	for _, key := range k.Keys() {
		t, ok := typeOf(known, key)
		if !ok {
			return &Error{Source: orDefault(source, "file"), Key: key, Reason: "unknown key (known: " + keyList(known) + ")"}
		}
		if _, exact := known[key]; !exact && t.Kind() == reflect.String {
			// A map's value (a label): text, or a number or true/false taken as its text.
			switch v := k.Get(key).(type) {
			case string, int64, float64:
			case bool:
				_ = k.Set(key, strconv.FormatBool(v)) // weak decoding would make it "1"
			default:
				return &Error{Source: orDefault(source, "file"), Key: key, Reason: fmt.Sprintf("is %s; expected text (a quoted string; a number or true/false is taken as its text)", describe(v))}
			}
			continue
		}
		if reason := checkFileValue(t, k.Get(key)); reason != "" {
			return &Error{Source: orDefault(source, "file"), Key: key, Reason: reason}
		}
	}
	var envErr *Error
	var fromEnv []string // the variables that set a key, named if decoding fails
	if err := k.Load(env.Provider(".", env.Opt{
		Prefix: EnvPrefix,
		TransformFunc: func(name, value string) (string, any) {
			key := strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, EnvPrefix)), "__", ".")
			t, ok := typeOf(known, key)
			if !ok || value == "" {
				return "", nil // not ours (EDGE_ variables of other tools), or set empty: unset
			}
			if reason := checkEnvValue(t, value); reason != "" && envErr == nil {
				envErr = &Error{Source: "environment", Key: name, Reason: "sets " + key + ": " + reason}
			}
			fromEnv = append(fromEnv, name)
			return key, value
		},
	}), nil); err != nil {
		return &Error{Source: "environment", Reason: err.Error()}
	}
	if envErr != nil {
		return envErr
	}
	if flags != nil {
		if err := k.Load(posflag.ProviderWithFlag(flags, ".", k, func(f *pflag.Flag) (string, any) {
			key, ok := flagKeys[f.Name]
			if !ok || !f.Changed {
				return "", nil
			}
			return key, posflag.FlagVal(flags, f)
		}), nil); err != nil {
			return &Error{Source: "flags", Reason: err.Error()}
		}
	}
	err := k.UnmarshalWithConf("", out, koanf.UnmarshalConf{
		Tag: "koanf",
		DecoderConfig: &mapstructure.DecoderConfig{
			DecodeHook: mapstructure.ComposeDecodeHookFunc(
				durationsAreStrings,
				mapstructure.StringToTimeDurationHookFunc(),
				mapstructure.StringToSliceHookFunc(","),
			),
			Result:           out,
			WeaklyTypedInput: true,
			ErrorUnused:      false,
		},
	})
	if err != nil {
		where := orDefault(source, "settings")
		if len(fromEnv) > 0 {
			where += " or environment variable " + strings.Join(fromEnv, ", ")
		}
		return &Error{Source: where, Reason: strings.Join(strings.Fields(err.Error()), " ")}
	}
	return nil
}

// durationsAreStrings refuses a bare number for a duration: TOML 5 would otherwise be
// 5 nanoseconds.
func durationsAreStrings(from, to reflect.Type, data any) (any, error) {
	if _, isDuration := data.(time.Duration); isDuration {
		return data, nil // a duration flag's value
	}
	if to == reflect.TypeOf(time.Duration(0)) && from.Kind() != reflect.String {
		return nil, fmt.Errorf("duration %v must be a string with a unit, such as \"5s\" or \"2m\"", data)
	}
	return data, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
