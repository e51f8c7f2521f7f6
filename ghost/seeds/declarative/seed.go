package declarative

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// Path is the only PATH a declarative seed's program sees, and where a bare program name
// is looked up: never the Ghost's own PATH.
const Path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Result statuses.
const (
	StatusOK       = "ok"
	StatusFailed   = "failed"
	StatusTimedOut = "timed_out"
)

// waitDelay is how long a killed program's output pipes may stay open (held by a
// grandchild) before the Ghost stops waiting for them.
const waitDelay = 2 * time.Second

// Seed runs the operations of one spec. Its files are under Dir()/files.
//
// It counts the executions it runs, so that whoever installed it knows when its directory
// may go: a seed replaced by a new version is retired (Retire: it runs nothing new, those
// running go on) and its directory kept until it has drained (Drained); a seed removed is
// cancelled (Cancel: its running programs are killed too).
type Seed struct {
	spec   *Spec
	dir    string
	getenv func(string) (string, bool)

	// life ends when the seed is cancelled; it ends the executions running.
	life context.Context
	kill context.CancelFunc

	mu      sync.Mutex
	running int  // executions entered and not yet returned
	retired bool // no new execution
	drained chan struct{}
}

// New returns the seed of spec, installed in dir (an absolute directory holding files/).
func New(spec *Spec, dir string) *Seed {
	life, kill := context.WithCancel(context.Background())
	return &Seed{spec: spec, dir: dir, getenv: os.LookupEnv, life: life, kill: kill, drained: make(chan struct{})}
}

// Retire stops the seed taking new executions (they are refused, nothing run); those
// running go on to their end. Drained tells when the last has returned.
func (s *Seed) Retire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.retired {
		s.retired = true
		if s.running == 0 {
			close(s.drained)
		}
	}
}

// Cancel retires the seed and cancels the executions running: their programs' process
// groups are killed and they return an error saying the seed was removed.
func (s *Seed) Cancel() {
	s.kill()
	s.Retire()
}

// Drained is closed once the seed is retired and no execution of it runs: nothing uses
// its directory any more.
func (s *Seed) Drained() <-chan struct{} { return s.drained }

// enter counts an execution in, or refuses it when the seed is retired; the caller calls
// leave when the execution returns.
func (s *Seed) enter() *bus.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.life.Err() != nil:
		return bus.FieldError(bus.CodeSemantic, "seed_selector", "seed %s was removed from this Ghost as the command reached it; nothing was run", s.spec.ID)
	case s.retired:
		return bus.Errorf(bus.CodeBusy, "seed %s %s was replaced by a new version as the command reached it; nothing was run: issue it again", s.spec.ID, s.spec.Version)
	}
	s.running++
	return nil
}

func (s *Seed) leave() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
	if s.retired && s.running == 0 {
		close(s.drained)
	}
}

// Spec returns the seed's spec.
func (s *Seed) Spec() *Spec { return s.spec }

// Dir returns the directory the seed is installed in; programs run there.
func (s *Seed) Dir() string { return s.dir }

// FilesDir returns the directory of the seed's shipped files.
func (s *Seed) FilesDir() string { return filepath.Join(s.dir, "files") }

// Info declares the seed and its operations.
func (s *Seed) Info() bus.SeedInfo {
	info := bus.SeedInfo{ID: s.spec.ID, Name: s.spec.Name, Description: s.spec.Description, Version: s.spec.Version}
	for _, op := range s.spec.Operations {
		oi := bus.OperationInfo{Name: op.Name, Description: op.Description, Idempotent: op.Idempotent, Params: []bus.ParamInfo{}}
		for _, p := range op.Params {
			desc := p.Description
			if p.Type != TypeString {
				desc = strings.TrimSpace(p.Type + ". " + desc)
			}
			if p.Default != nil {
				desc = strings.TrimSpace(fmt.Sprintf("%s (default %q)", desc, *p.Default))
			}
			oi.Params = append(oi.Params, bus.ParamInfo{Name: p.Name, Required: p.Required, Pattern: p.Pattern,
				MaxBytes: p.MaxBytes, Min: p.Min, Max: p.Max, Description: desc, NoLeadingDash: op.beginsOption(p)})
		}
		info.Operations = append(info.Operations, oi)
	}
	return info
}

var (
	errOpTimeout   = errors.New("operation timeout")
	errSeedRemoved = errors.New("seed removed")
)

// Execute renders the operation's argv and runs it, without a shell, in the seed's
// directory, with only the allowed environment and the fixed PATH. Stdout and stderr are
// captured; a non-zero exit is a runtime error (1400) that keeps the exit code. A retired
// seed refuses it, nothing run: 1501 when it was replaced, 1300 when it was removed.
func (s *Seed) Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error) {
	if req == nil {
		return bus.Result{Status: StatusFailed, ExitCode: 1}, bus.Errorf(bus.CodeSemantic, "no seed.execute given")
	}
	if perr := s.enter(); perr != nil {
		return refused(perr)
	}
	defer s.leave()
	ctx, remove := context.WithCancelCause(ctx)
	defer remove(nil)
	defer context.AfterFunc(s.life, func() { remove(errSeedRemoved) })()
	op, ok := s.spec.Operation(req.Operation)
	if !ok {
		return refused(bus.FieldError(bus.CodeSemantic, "operation", "%s has no operation %q", s.spec.ID, req.Operation))
	}
	argv, err := op.Render(req.Args, s.FilesDir())
	if err != nil {
		var ae *ArgError
		if errors.As(err, &ae) {
			return refused(bus.FieldError(bus.CodeSemantic, "args."+ae.Param, "%s", ae.Reason))
		}
		return refused(bus.Errorf(bus.CodeSemantic, "%v", err))
	}
	prog, err := lookProgram(argv[0])
	if err != nil {
		return bus.Result{Status: StatusFailed, ExitCode: 127, Stderr: err.Error()}, bus.Errorf(bus.CodeRuntime, "%v", err)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, op.Timeout, errOpTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.Dir = s.dir
	cmd.Env = s.env(op)
	stdout, stderr := &capped{max: bus.MaxOutput}, &capped{max: bus.MaxOutput}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.WaitDelay = waitDelay
	killGroup(cmd)
	runErr := cmd.Start()
	if runErr == nil {
		endGroup(cmd)
		runErr = cmd.Wait()
	}
	res := bus.Result{Status: StatusOK, Stdout: stdout.String(), Stderr: stderr.String(), Truncated: stdout.cut || stderr.cut}
	if runErr == nil {
		return res, nil
	}
	res.Status, res.ExitCode = StatusFailed, -1
	if errors.Is(context.Cause(ctx), errOpTimeout) {
		res.Status = StatusTimedOut
		return res, bus.Errorf(bus.CodeExecTimeout, "%s %s ran past the operation's timeout of %s; its process group was killed", s.spec.ID, op.Name, op.Timeout)
	}
	if errors.Is(context.Cause(ctx), errSeedRemoved) {
		return res, bus.Errorf(bus.CodeRuntime, "seed %s was removed from this Ghost while %s ran; its process group was killed", s.spec.ID, op.Name)
	}
	if ctx.Err() != nil {
		return res, ctx.Err() // the command's own timeout or the Ghost stopping: the pipeline decides
	}
	var ee *exec.ExitError
	if errors.As(runErr, &ee) {
		res.ExitCode = ee.ExitCode()
		if res.ExitCode < 0 {
			return res, bus.Errorf(bus.CodeRuntime, "%s was killed: %s", argv[0], ee.ProcessState)
		}
		return res, bus.Errorf(bus.CodeRuntime, "%s exited with status %d", argv[0], res.ExitCode)
	}
	return res, bus.Errorf(bus.CodeRuntime, "running %s: %v", argv[0], runErr)
}

func refused(perr *bus.Error) (bus.Result, error) {
	return bus.Result{Status: "refused", ExitCode: -1, Stderr: perr.Message}, perr
}

// env is the fixed PATH plus the allowed variables the Ghost has.
func (s *Seed) env(op *Operation) []string {
	out := []string{"PATH=" + Path}
	for _, name := range op.Env {
		if v, ok := s.getenv(name); ok {
			out = append(out, name+"="+v)
		}
	}
	return out
}

// lookProgram resolves argv[0]: an absolute path as is, a bare name in Path only.
func lookProgram(name string) (string, error) {
	if filepath.IsAbs(name) {
		if err := executable(name); err != nil {
			return "", fmt.Errorf("program %s: %w", name, err)
		}
		return name, nil
	}
	for _, dir := range filepath.SplitList(Path) {
		p := filepath.Join(dir, name)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("program %q not found in %s", name, Path)
}

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("not an executable file")
	}
	return nil
}

// capped keeps the first max bytes written to it and notes whether more came.
type capped struct {
	b   []byte
	max int
	cut bool
}

func (c *capped) Write(p []byte) (int, error) {
	room := c.max - len(c.b)
	if len(p) > room {
		c.b = append(c.b, p[:max(room, 0)]...)
		c.cut = true
	} else {
		c.b = append(c.b, p...)
	}
	return len(p), nil
}

func (c *capped) String() string { return string(c.b) }
