package declarative

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/edgectl/edgectl/bus"
)

// A spec travels through the object store edge_seeds (bus.BucketSeeds) as a bundle of
// objects, all under "<id>/<version>/":
//
//	<id>/<version>/spec.toml       the spec
//	<id>/<version>/files/<name>    each shipped file
//	<id>/<version>/manifest.json   the Manifest: every object's name and SHA-256
//	<id>/latest.json               the Manifest of the version pushed last
//
// A push install (ghost seed.install) carries the digests in the command's args, so
// under auth they are signed by Mirage with the command; a boot install reads them from
// the manifest.

// SpecObject is the object name of a spec.
func SpecObject(id, version string) string { return id + "/" + version + "/spec.toml" }

// FileObject is the object name of a shipped file.
func FileObject(id, version, name string) string { return id + "/" + version + "/files/" + name }

// ManifestObject is the object name of a version's manifest.
func ManifestObject(id, version string) string { return id + "/" + version + "/manifest.json" }

// LatestObject is the object name of the manifest of the version pushed last.
func LatestObject(id string) string { return id + "/latest.json" }

// Digest is the lowercase hex SHA-256 of data.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Entry is one object of a bundle.
type Entry struct {
	Name   string `json:"name"` // spec.toml, or the file's name
	Object string `json:"object"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Manifest lists the objects of one version of a seed with their digests.
type Manifest struct {
	ID      string  `json:"id"`
	Version string  `json:"version"`
	Spec    Entry   `json:"spec"`
	Files   []Entry `json:"files"`
}

// Bundle is a validated spec with its files, ready to publish.
type Bundle struct {
	Spec     *Spec
	SpecData []byte
	Files    map[string][]byte // by file name
}

// NewBundle validates a spec and checks that files are exactly the files it declares.
func NewBundle(specData []byte, files map[string][]byte) (*Bundle, error) {
	spec, err := Parse(specData)
	if err != nil {
		return nil, err
	}
	for name, data := range files {
		if _, ok := spec.File(name); !ok {
			return nil, fmt.Errorf("file %s is not declared in the spec's [[files]]", name)
		}
		if len(data) > MaxFileSize {
			return nil, fmt.Errorf("file %s is %d bytes, at most %d are allowed", name, len(data), MaxFileSize)
		}
	}
	for _, f := range spec.Files {
		if _, ok := files[f.Name]; !ok {
			return nil, fmt.Errorf("the spec declares file %s: give it with --file PATH/%s", f.Name, f.Name)
		}
	}
	return &Bundle{Spec: spec, SpecData: specData, Files: files}, nil
}

// Manifest returns the bundle's manifest.
func (b *Bundle) Manifest() Manifest {
	id, v := b.Spec.ID, b.Spec.Version
	m := Manifest{ID: id, Version: v, Files: []Entry{},
		Spec: Entry{Name: "spec.toml", Object: SpecObject(id, v), SHA256: Digest(b.SpecData), Size: int64(len(b.SpecData))}}
	for _, f := range b.Spec.Files {
		data := b.Files[f.Name]
		m.Files = append(m.Files, Entry{Name: f.Name, Object: FileObject(id, v, f.Name), SHA256: Digest(data), Size: int64(len(data))})
	}
	return m
}

// ErrVersionConflict is returned by Publish when the version is already in the store
// with different content: a version is immutable, push a new one.
var ErrVersionConflict = errors.New("version already pushed with different content")

// Publish stores the bundle's objects and manifests. Objects already stored with the same
// digest are left alone; unchanged is true when all were. A version stored with other
// content is refused with ErrVersionConflict, before anything is written.
func Publish(ctx context.Context, obs jetstream.ObjectStore, b *Bundle) (m Manifest, unchanged bool, err error) {
	m = b.Manifest()
	mdata, err := json.Marshal(m)
	if err != nil {
		return m, false, err
	}
	type put struct {
		name   string
		data   []byte
		digest string
	}
	puts := []put{{m.Spec.Object, b.SpecData, m.Spec.SHA256}}
	for _, f := range m.Files {
		puts = append(puts, put{f.Object, b.Files[f.Name], f.SHA256})
	}
	puts = append(puts, put{ManifestObject(m.ID, m.Version), mdata, Digest(mdata)})
	var todo []put
	for _, p := range puts {
		info, err := obs.GetInfo(ctx, p.name)
		switch {
		case errors.Is(err, jetstream.ErrObjectNotFound):
			todo = append(todo, p)
		case err != nil:
			return m, false, fmt.Errorf("object %s: %w", p.name, err)
		case storeDigest(info.Digest) != p.digest:
			return m, false, fmt.Errorf("%w: %s %s (object %s); versions are immutable, push a new version", ErrVersionConflict, m.ID, m.Version, p.name)
		}
	}
	for _, p := range todo {
		meta := jetstream.ObjectMeta{Name: p.name, Description: "edgectl seed " + m.ID + " " + m.Version,
			Metadata: map[string]string{"seed": m.ID, "version": m.Version, "sha256": p.digest}}
		if _, err := obs.Put(ctx, meta, bytes.NewReader(p.data)); err != nil {
			return m, false, fmt.Errorf("store %s: %w", p.name, err)
		}
	}
	latest := LatestObject(m.ID)
	if info, err := obs.GetInfo(ctx, latest); err != nil || storeDigest(info.Digest) != Digest(mdata) {
		meta := jetstream.ObjectMeta{Name: latest, Description: "edgectl seed " + m.ID + ": the version pushed last"}
		if _, err := obs.Put(ctx, meta, bytes.NewReader(mdata)); err != nil {
			return m, false, fmt.Errorf("store %s: %w", latest, err)
		}
	}
	return m, len(todo) == 0, nil
}

// storeDigest turns the object store's "SHA-256=<base64url>" into lowercase hex.
func storeDigest(d string) string {
	raw, ok := strings.CutPrefix(d, "SHA-256=")
	if !ok {
		return ""
	}
	sum, err := base64.URLEncoding.DecodeString(raw)
	if err != nil {
		return ""
	}
	return hex.EncodeToString(sum)
}

// Fetch reads object name from the store, at most max bytes, and checks its SHA-256
// against want. A missing or oversized object is a semantic error (1300); content that
// does not match its digest is a security error (1800); a chunk that could not be read
// (the object put again meanwhile, a lagging replica) is a runtime error (1400): retry.
func Fetch(ctx context.Context, obs ObjectReader, name, want string, max int64) ([]byte, error) {
	data, err := obs.Get(ctx, name, uint64(max))
	if err != nil {
		return nil, readError(name, err, "; nothing installed")
	}
	if got := Digest(data); got != want {
		return nil, bus.Errorf(bus.CodeSecurity, "object %s has sha256 %s, the install expects %s: refused as tampered, nothing installed", name, got, want)
	}
	return data, nil
}

// readError turns an error of an ObjectReader into the protocol error the install
// reports: the same for a read by direct get and one through Mirage.
func readError(name string, err error, suffix string) *bus.Error {
	var perr *bus.Error
	switch {
	case errors.Is(err, jetstream.ErrObjectNotFound):
		return bus.Errorf(bus.CodeSemantic, "object %s is not in %s: push the seed first (miragectl seed push)", name, bus.BucketSeeds)
	case errors.Is(err, ErrObjectTooLarge):
		return bus.Errorf(bus.CodeSemantic, "%v", err)
	case errors.Is(err, ErrChunkMissing):
		return bus.Errorf(bus.CodeRuntime, "object %s could not be read after %d tries (%v): it was probably being pushed again, or a replica lags behind; not corrupt%s; a later try should succeed", name, readAttempts, err, suffix)
	case errors.Is(err, jetstream.ErrDigestMismatch):
		return bus.Errorf(bus.CodeSecurity, "object %s is corrupt: its chunks do not match the store's size and digest (%v)%s", name, err, suffix)
	case errors.Is(err, ErrNoMirage):
		return bus.Errorf(bus.CodeRuntime, "reading object %s: %v%s; a later try should succeed once Mirage serves", name, err, suffix)
	case errors.Is(err, ErrMirageStalled):
		return bus.Errorf(bus.CodeRuntime, "reading object %s: %v%s; a later try should succeed", name, err, suffix)
	case errors.As(err, &perr):
		return bus.Errorf(perr.Code, "reading object %s through Mirage: %s%s", name, perr.Message, suffix)
	}
	return StoreError("reading object "+name, err)
}

// InfoTimeout bounds each metadata request to the object store.
const InfoTimeout = 10 * time.Second

// StoreError is a runtime error (1400) reading edge_seeds. A timeout says what usually
// causes it: a Ghost not allowed to read the store, whose requests go unanswered.
func StoreError(what string, err error) *bus.Error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		return bus.Errorf(bus.CodeRuntime, "%s: %s did not answer in time; is JetStream up, and may this Ghost read %s (docs/seeds.md lists the permissions)?", what, bus.BucketSeeds, bus.BucketSeeds)
	}
	return bus.Errorf(bus.CodeRuntime, "%s: %v", what, err)
}

// manifestTimeout bounds a manifest read from the store itself (InfoTimeout; tests
// shorten it).
var manifestTimeout = InfoTimeout

// FetchManifest reads the manifest of a version (the version pushed last when version is
// empty), for boot installs. Read from the store itself, within InfoTimeout; through
// Mirage, within the waits MirageObjects keeps and ctx: Mirage may take up to
// bus.SeedFirstWait to start answering while its read slots are busy.
func FetchManifest(ctx context.Context, obs ObjectReader, id, version string) (Manifest, error) {
	name := LatestObject(id)
	if version != "" {
		name = ManifestObject(id, version)
	}
	if _, viaMirage := obs.(*MirageObjects); !viaMirage {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, manifestTimeout)
		defer cancel()
	}
	// The manifest has no digest to check it against but the store's own.
	data, err := obs.Get(ctx, name, MaxSpecSize)
	if err != nil {
		return Manifest{}, readError(name, err, "")
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return Manifest{}, bus.Errorf(bus.CodeSemantic, "object %s is not a manifest: %v", name, err)
	}
	if m.ID != id || (version != "" && m.Version != version) {
		return Manifest{}, bus.Errorf(bus.CodeSemantic, "object %s describes %s %s", name, m.ID, m.Version)
	}
	// The same checks as a pushed install: names under <id>/<version>/, digests well formed.
	var checked Manifest
	if err := ManifestFromArgs(m.InstallArgs(), &checked); err != nil {
		return Manifest{}, err
	}
	// Sizes are not install args: kept from the stored manifest, within the bounds a read
	// allows, to size a boot install's time (the digests still decide what is installed).
	checked.Spec.Size = boundedSize(m.Spec.Size, MaxSpecSize)
	sizes := map[string]int64{}
	for _, f := range m.Files {
		sizes[f.Name] = f.Size
	}
	for i := range checked.Files {
		checked.Files[i].Size = boundedSize(sizes[checked.Files[i].Name], MaxFileSize)
	}
	return checked, nil
}

// boundedSize is n within [0, max].
func boundedSize(n int64, max uint64) int64 {
	switch {
	case n < 0:
		return 0
	case uint64(n) > max:
		return int64(max)
	}
	return n
}

// Params of ghost seed.install, as InstallArgs writes them and ManifestFromArgs reads them.
const (
	ArgID      = "id"
	ArgVersion = "version"
	ArgSpec    = "spec"   // object name of the spec (default <id>/<version>/spec.toml)
	ArgSHA256  = "sha256" // of the spec
	ArgFiles   = "files"  // NAME:SHA256,NAME:SHA256 (object <id>/<version>/files/NAME)
)

// Patterns of the seed.install params.
const (
	PatternVersion = `[0-9A-Za-z][0-9A-Za-z._+-]{0,63}`
	PatternSHA256  = `[0-9a-f]{64}`
	PatternObject  = `[A-Za-z0-9._+/-]{1,400}`
	PatternFiles   = `[A-Za-z0-9][A-Za-z0-9._-]{0,127}:[0-9a-f]{64}(,[A-Za-z0-9][A-Za-z0-9._-]{0,127}:[0-9a-f]{64})*`
)

// InstallArgs are the args of the ghost seed.install command that installs m.
func (m Manifest) InstallArgs() map[string]string {
	args := map[string]string{ArgID: m.ID, ArgVersion: m.Version, ArgSpec: m.Spec.Object, ArgSHA256: m.Spec.SHA256}
	var files []string
	for _, f := range m.Files {
		files = append(files, f.Name+":"+f.SHA256)
	}
	if len(files) > 0 {
		args[ArgFiles] = strings.Join(files, ",")
	}
	return args
}

// ManifestFromArgs reads the args of seed.install into out, checking every name: the
// objects must lie under <id>/<version>/ and file names cannot leave the files directory.
func ManifestFromArgs(args map[string]string, out *Manifest) error {
	m := Manifest{ID: args[ArgID], Version: args[ArgVersion], Files: []Entry{}}
	if err := ValidateSeedID(m.ID); err != nil {
		return bus.FieldError(bus.CodeSemantic, "args.id", "%v", err)
	}
	if err := ValidateVersion(m.Version); err != nil {
		return bus.FieldError(bus.CodeSemantic, "args.version", "%v", err)
	}
	m.Spec = Entry{Name: "spec.toml", Object: args[ArgSpec], SHA256: args[ArgSHA256]}
	if m.Spec.Object == "" {
		m.Spec.Object = SpecObject(m.ID, m.Version)
	}
	prefix := m.ID + "/" + m.Version + "/"
	if !strings.HasPrefix(m.Spec.Object, prefix) {
		return bus.FieldError(bus.CodeSemantic, "args.spec", "object %q is not under %s", m.Spec.Object, prefix)
	}
	// Path elements, not bytes: "spec..toml" is a name, ".." would leave the prefix.
	if err := ValidateObjectName(m.Spec.Object); err != nil {
		return bus.FieldError(bus.CodeSemantic, "args.spec", "%v", err)
	}
	if !validSHA256(m.Spec.SHA256) {
		return bus.FieldError(bus.CodeSemantic, "args.sha256", "give the spec's SHA-256 as 64 lowercase hex digits")
	}
	if list := args[ArgFiles]; list != "" {
		for _, item := range strings.Split(list, ",") {
			name, digest, _ := strings.Cut(item, ":")
			if err := ValidateFileName(name); err != nil {
				return bus.FieldError(bus.CodeSemantic, "args.files", "%v", err)
			}
			if !validSHA256(digest) {
				return bus.FieldError(bus.CodeSemantic, "args.files", "file %s: give its SHA-256 as 64 lowercase hex digits (NAME:SHA256)", name)
			}
			m.Files = append(m.Files, Entry{Name: name, Object: FileObject(m.ID, m.Version, name), SHA256: digest})
		}
	}
	if len(m.Files) > MaxFiles {
		return bus.FieldError(bus.CodeSemantic, "args.files", "%d files, at most %d are allowed", len(m.Files), MaxFiles)
	}
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].Name < m.Files[j].Name })
	for i := 1; i < len(m.Files); i++ {
		if m.Files[i].Name == m.Files[i-1].Name {
			return bus.FieldError(bus.CodeSemantic, "args.files", "file %s is listed twice", m.Files[i].Name)
		}
	}
	*out = m
	return nil
}
