package declarative

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/subjects"
)

// Limits of a spec.
const (
	MaxSpecSize    = 256 << 10 // bytes of spec.toml
	MaxFileSize    = 32 << 20  // bytes of one shipped file
	MaxFiles       = 64
	MaxOperations  = 64
	MaxParams      = 32
	MaxArgv        = 256
	DefaultTimeout = time.Minute
	MaxTimeout     = 24 * time.Hour
)

// Param types.
const (
	TypeString = "string"
	TypeInt    = "int"
	TypeBool   = "bool"
)

// ErrInvalidSpec is wrapped by every spec validation error.
var ErrInvalidSpec = errors.New("invalid seed spec")

// SpecError is a spec validation error: the key at fault and what is wrong with it.
type SpecError struct {
	Key    string // dotted TOML key, e.g. operations.uname.argv[0]; empty for the document
	Line   int    // 1-based line of a TOML syntax error, 0 when unknown
	Reason string
}

func (e *SpecError) Error() string {
	switch {
	case e.Line > 0:
		return fmt.Sprintf("%s: line %d: %s", ErrInvalidSpec, e.Line, e.Reason)
	case e.Key == "":
		return fmt.Sprintf("%s: %s", ErrInvalidSpec, e.Reason)
	}
	return fmt.Sprintf("%s: key %s: %s", ErrInvalidSpec, e.Key, e.Reason)
}

func (e *SpecError) Unwrap() error { return ErrInvalidSpec }

func bad(key, format string, args ...any) error {
	return &SpecError{Key: key, Reason: fmt.Sprintf(format, args...)}
}

// Spec is a parsed and validated declarative seed.
type Spec struct {
	ID          string
	Name        string
	Description string
	Version     string
	Files       []File
	Operations  []*Operation // sorted by name
}

// File is a file the seed ships; argv refers to it as {{file:NAME}}.
type File struct {
	Name        string
	Executable  bool
	Description string
}

// Operation is one operation: an argv template and its params.
type Operation struct {
	Name        string
	Description string
	Argv        []string // the template as written
	Timeout     time.Duration
	Idempotent  bool
	Env         []string // names of environment variables passed through
	Params      []Param  // sorted by name
	tmpl        []element
	optEnd      int // index of the first literal "--" among the final program's arguments (len(tmpl) when none): what follows is not read as options
	patterns    map[string]*bus.ParamPattern
}

// Param is one declared param of an operation.
type Param struct {
	Name        string
	Type        string
	Required    bool
	Pattern     string // the effective pattern (the type's when none was given)
	Default     *string
	Min, Max    *int64
	MaxBytes    int
	Description string
	// AllowLeadingDash lets a value starting with "-" begin an argv element before the
	// program's "--" (see Render): the spec's author says the program reads it there as a value.
	AllowLeadingDash bool
}

// Operation returns the named operation.
func (s *Spec) Operation(name string) (*Operation, bool) {
	for _, op := range s.Operations {
		if op.Name == name {
			return op, true
		}
	}
	return nil, false
}

// File returns the named shipped file.
func (s *Spec) File(name string) (File, bool) {
	for _, f := range s.Files {
		if f.Name == name {
			return f, true
		}
	}
	return File{}, false
}

// takes lists the params op declares, for an error about one it does not (bus.TakesParams).
func (op *Operation) takes() string {
	params := make([]bus.ParamInfo, len(op.Params))
	for i, p := range op.Params {
		params[i] = bus.ParamInfo{Name: p.Name, Required: p.Required}
	}
	return bus.TakesParams(params)
}

// Param returns the named param.
func (op *Operation) Param(name string) (Param, bool) {
	for _, p := range op.Params {
		if p.Name == name {
			return p, true
		}
	}
	return Param{}, false
}

type rawSpec struct {
	ID          string                  `toml:"id"`
	Name        string                  `toml:"name"`
	Description string                  `toml:"description"`
	Version     string                  `toml:"version"`
	Files       []rawFile               `toml:"files"`
	Operations  map[string]rawOperation `toml:"operations"`
}

type rawFile struct {
	Name        string `toml:"name"`
	Executable  bool   `toml:"executable"`
	Description string `toml:"description"`
}

type rawOperation struct {
	Description string              `toml:"description"`
	Argv        []string            `toml:"argv"`
	Timeout     string              `toml:"timeout"`
	Idempotent  *bool               `toml:"idempotent"`
	Env         []string            `toml:"env"`
	Params      map[string]rawParam `toml:"params"`
}

type rawParam struct {
	Type        string  `toml:"type"`
	Required    bool    `toml:"required"`
	Pattern     string  `toml:"pattern"`
	Default     *string `toml:"default"`
	Min         *int64  `toml:"min"`
	Max         *int64  `toml:"max"`
	MaxBytes    int     `toml:"max_bytes"`
	Description string  `toml:"description"`
	// AllowLeadingDash: see Param.
	AllowLeadingDash bool `toml:"allow_leading_dash"`
}

// Type patterns: the pattern of a param without one of its own.
var typePatterns = map[string]string{TypeInt: `-?[0-9]{1,18}`, TypeBool: `true|false`}

// ValidateVersion checks a seed version: 1-64 of A-Z a-z 0-9 . _ + -, starting with a
// letter or digit (it names a directory and an object prefix), without "..", and not a
// name the install keeps beside the version directories (current.json, its .tmp).
func ValidateVersion(v string) error {
	if !validVersion(v) {
		return fmt.Errorf("version %q: use 1-64 of A-Z a-z 0-9 . _ + -, starting with a letter or digit", v)
	}
	if strings.Contains(v, "..") {
		return fmt.Errorf("version %q contains \"..\": it names a directory and object names, where .. is refused; use single dots (1.2.3)", v)
	}
	if strings.HasPrefix(v, "current.json") {
		return fmt.Errorf("version %q: the name of the install's record; choose another", v)
	}
	return nil
}

// ValidateFileName checks the name of a shipped file: one path element, no way out of
// the seed's files directory.
func ValidateFileName(name string) error {
	switch {
	case name == "":
		return errors.New("file name is empty")
	case strings.HasPrefix(name, "/") || strings.HasPrefix(name, `\`):
		return fmt.Errorf("file name %q is absolute; give a bare name, it is installed under the seed's files directory", name)
	case strings.Contains(name, ".."):
		return fmt.Errorf("file name %q contains ..; a file cannot leave the seed's files directory", name)
	case strings.ContainsAny(name, `/\`):
		return fmt.Errorf("file name %q contains a path separator; give a bare name", name)
	case !validFileName(name):
		return fmt.Errorf("file name %q: use 1-128 of A-Z a-z 0-9 . _ -, starting with a letter or digit", name)
	}
	return nil
}

// ValidateSeedID checks the id of a declarative seed: a seed id (lowercase a-z 0-9 . _ -)
// starting with a letter or digit, without "..", and not reserved: "ghost" is the control
// seed, "seed.*" the built-in seeds.
func ValidateSeedID(id string) error {
	if err := subjects.ValidateSeedID(id); err != nil {
		return err
	}
	if c := id[0]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
		return fmt.Errorf("seed id %q must start with a letter or digit (it names a directory)", id)
	}
	if strings.Contains(id, "..") {
		return fmt.Errorf("seed id %q contains \"..\": it names a directory and object names, where .. is refused; use single dots (node.system)", id)
	}
	if id == "ghost" || strings.HasPrefix(id, "seed.") {
		return fmt.Errorf("seed id %q is reserved (ghost and seed.* are built in)", id)
	}
	return nil
}

// Parse reads and validates a spec. Errors are *SpecError values naming the key.
func Parse(data []byte) (*Spec, error) {
	if len(data) > MaxSpecSize {
		return nil, bad("", "the spec is %d bytes, at most %d are allowed", len(data), MaxSpecSize)
	}
	var raw rawSpec
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, decodeError(err)
	}
	s := &Spec{ID: raw.ID, Name: raw.Name, Description: raw.Description, Version: raw.Version}
	if s.ID == "" {
		return nil, bad("id", "missing: every seed needs an id (lowercase a-z 0-9 . _ -)")
	}
	if err := ValidateSeedID(s.ID); err != nil {
		return nil, bad("id", "%s", subjects.Reason(err))
	}
	if strings.TrimSpace(s.Name) == "" || len(s.Name) > 128 || strings.ContainsAny(s.Name, "\r\n") {
		return nil, bad("name", "must be one line of 1-128 characters")
	}
	if len(s.Description) > 4096 {
		return nil, bad("description", "at most 4096 bytes")
	}
	if s.Version == "" {
		return nil, bad("version", "missing: every seed needs a version; push a new one to replace it")
	}
	if err := ValidateVersion(s.Version); err != nil {
		return nil, bad("version", "%v", err)
	}
	if len(raw.Files) > MaxFiles {
		return nil, bad("files", "%d files, at most %d are allowed", len(raw.Files), MaxFiles)
	}
	for i, f := range raw.Files {
		if err := ValidateFileName(f.Name); err != nil {
			return nil, bad(fmt.Sprintf("files[%d].name", i), "%v", err)
		}
		if _, dup := s.File(f.Name); dup {
			return nil, bad(fmt.Sprintf("files[%d].name", i), "file %q is declared twice", f.Name)
		}
		s.Files = append(s.Files, File(f))
	}
	if len(raw.Operations) == 0 {
		return nil, bad("operations", "missing: declare at least one operation ([operations.NAME] with argv)")
	}
	if len(raw.Operations) > MaxOperations {
		return nil, bad("operations", "%d operations, at most %d are allowed", len(raw.Operations), MaxOperations)
	}
	for name, ro := range raw.Operations {
		op, err := s.operation(name, ro)
		if err != nil {
			return nil, err
		}
		s.Operations = append(s.Operations, op)
	}
	sort.Slice(s.Operations, func(i, j int) bool { return s.Operations[i].Name < s.Operations[j].Name })
	return s, nil
}

func decodeError(err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		var keys []string
		for _, e := range strict.Errors {
			keys = append(keys, strings.Join(e.Key(), "."))
		}
		return bad(keys[0], "unknown key (unknown: %s)", strings.Join(keys, ", "))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		reason := strings.TrimPrefix(de.Error(), "toml: ")
		if m := typeErrRe().FindStringSubmatch(reason); m != nil {
			reason = fmt.Sprintf("%s: a TOML %s where %s is expected", strings.ToLower(m[2]), m[1], goTypes[m[3]])
		}
		return &SpecError{Line: line, Reason: reason}
	}
	return &SpecError{Reason: strings.TrimPrefix(err.Error(), "toml: ")}
}

// typeErrRe reads go-toml's type errors, to say them in the spec's terms. It is compiled
// when a spec fails to decode, not at every start.
func typeErrRe() *regexp.Regexp {
	return regexp.MustCompile(`^cannot decode TOML (\w+) into struct field declarative\.raw\w+\.(\w+) of type \*?(.+)$`)
}

var goTypes = map[string]string{"string": "a string", "bool": "true or false", "int64": "an integer",
	"[]string": "a list of strings", "[]declarative.rawFile": "[[files]] tables"}

func (s *Spec) operation(name string, ro rawOperation) (*Operation, error) {
	key := "operations." + name
	if err := subjects.ValidateOperation(name); err != nil {
		return nil, bad(key, "%s", subjects.Reason(err))
	}
	op := &Operation{Name: name, Description: ro.Description, Argv: ro.Argv, Env: ro.Env, Timeout: DefaultTimeout, patterns: map[string]*bus.ParamPattern{}}
	if strings.TrimSpace(op.Description) == "" {
		return nil, bad(key+".description", "missing: say what the operation does")
	}
	if ro.Idempotent == nil {
		return nil, bad(key+".idempotent", "missing: say whether running it twice is safe (true or false)")
	}
	op.Idempotent = *ro.Idempotent
	if ro.Timeout != "" {
		d, err := time.ParseDuration(ro.Timeout)
		if err != nil || d <= 0 || d > MaxTimeout {
			return nil, bad(key+".timeout", "%q: give a positive duration with a unit, at most 24h (e.g. \"30s\")", ro.Timeout)
		}
		op.Timeout = d
	}
	seen := map[string]bool{}
	for i, e := range ro.Env {
		switch {
		case !validEnvName(e):
			return nil, bad(fmt.Sprintf("%s.env[%d]", key, i), "%q is not an environment variable name", e)
		case e == "PATH":
			return nil, bad(fmt.Sprintf("%s.env[%d]", key, i), "PATH is fixed by the Ghost and cannot be passed through")
		case seen[e]:
			return nil, bad(fmt.Sprintf("%s.env[%d]", key, i), "%s is listed twice", e)
		}
		seen[e] = true
	}
	if len(ro.Params) > MaxParams {
		return nil, bad(key+".params", "%d params, at most %d are allowed", len(ro.Params), MaxParams)
	}
	for pname, rp := range ro.Params {
		p, pat, err := param(key+".params."+pname, pname, rp)
		if err != nil {
			return nil, err
		}
		op.patterns[pname] = pat
		op.Params = append(op.Params, p)
	}
	sort.Slice(op.Params, func(i, j int) bool { return op.Params[i].Name < op.Params[j].Name })
	if err := op.compile(s, key); err != nil {
		return nil, err
	}
	return op, nil
}

// param checks a declared param and returns it with its pattern, compiled on first use.
func param(key, name string, rp rawParam) (Param, *bus.ParamPattern, error) {
	if !bus.ValidArgName(name) {
		return Param{}, nil, bad(key, "param name %q: use lowercase a-z 0-9 _, starting with a letter (1-64)", name)
	}
	p := Param{Name: name, Type: rp.Type, Required: rp.Required, Pattern: rp.Pattern, Default: rp.Default, Min: rp.Min, Max: rp.Max, MaxBytes: rp.MaxBytes, Description: rp.Description, AllowLeadingDash: rp.AllowLeadingDash}
	if p.Type == "" {
		p.Type = TypeString
	}
	switch p.Type {
	case TypeString:
		if p.Pattern == "" {
			return Param{}, nil, bad(key+".pattern", "missing: a string param needs a pattern its values must fully match (e.g. \"[a-z0-9-]{1,64}\")")
		}
	case TypeInt, TypeBool:
		if p.Pattern != "" {
			return Param{}, nil, bad(key+".pattern", "a param of type %s takes no pattern: its type decides", p.Type)
		}
		p.Pattern = typePatterns[p.Type]
	default:
		return Param{}, nil, bad(key+".type", "%q: use string, int or bool", p.Type)
	}
	if (p.Min != nil || p.Max != nil) && p.Type != TypeInt {
		return Param{}, nil, bad(key, "min and max are for params of type int")
	}
	if p.MaxBytes < 0 || (p.MaxBytes > 0 && p.Type != TypeString) {
		return Param{}, nil, bad(key+".max_bytes", "a positive size, for params of type string")
	}
	if p.AllowLeadingDash && p.Type == TypeBool {
		return Param{}, nil, bad(key+".allow_leading_dash", "for params of type string or int: a bool is never read as an option")
	}
	if p.Min != nil && p.Max != nil && *p.Min > *p.Max {
		return Param{}, nil, bad(key+".min", "min %d is above max %d", *p.Min, *p.Max)
	}
	pat, err := bus.ParseParamPattern(p.Pattern)
	if err != nil {
		return Param{}, nil, bad(key+".pattern", "does not compile: %v", err)
	}
	if p.Default != nil {
		if p.Required {
			return Param{}, nil, bad(key+".default", "a required param takes no default")
		}
		if err := p.check(pat, *p.Default); err != nil {
			return Param{}, nil, bad(key+".default", "%v", err)
		}
	}
	return p, pat, nil
}
