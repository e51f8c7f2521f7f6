package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	rssGhost   = "bench-rss"
	modulePath = "github.com/edgectl/edgectl"
)

// ghostRSS starts a real ghostctl process (see ghostctl) against a loopback listener of a
// fresh server with Mirage, waits until it registered, lets it settle for 2 s, and reads
// its resident memory (VmRSS) in MiB. It returns -1, with a note, when no ghostctl can be
// found or built, or the system has no /proc.
func (e *runEnv) ghostRSS(ctx context.Context) (float64, error) {
	bin, err := e.ghostctl(ctx)
	if err != nil {
		e.note("ghost_rss_mb is -1: " + err.Error())
		return -1, nil
	}
	p, err := e.startPlane(ctx, true)
	if err != nil {
		return 0, err
	}
	defer p.close()
	dir := filepath.Join(e.dir, "ghost-"+rssGhost)
	initCmd := exec.CommandContext(ctx, bin, "init", "--id", rssGhost, "--out", dir, "--server", p.srv.ClientURL())
	initCmd.Env = childEnv()
	if out, err := initCmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("ghostctl init: %v: %s", err, bytes.TrimSpace(out))
	}
	var out bytes.Buffer
	run := exec.Command(bin, "run", "--config", filepath.Join(dir, "config.toml"))
	run.Env = childEnv()
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		return 0, fmt.Errorf("ghostctl run: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = run.Wait(); close(exited) }()
	defer func() {
		_ = run.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = run.Process.Kill()
			<-exited
		}
	}()
	registered := func() bool {
		select {
		case <-exited:
			return true
		default:
		}
		_, ok := p.mirage.Fleet().Get(rssGhost)
		return ok
	}
	if err := waitFor(ctx, 30*time.Second, 20*time.Millisecond, "ghostctl to register", registered); err != nil {
		return 0, fmt.Errorf("%w; its output:\n%s", err, out.String())
	}
	select {
	case <-exited:
		return 0, fmt.Errorf("ghostctl run exited early; its output:\n%s", out.String())
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(2 * time.Second): // idle: registered, subscribed, past its first catch-up
	}
	kb, err := vmRSS(run.Process.Pid)
	if err != nil {
		e.note("ghost_rss_mb is -1: " + err.Error())
		return -1, nil
	}
	return roundPositive(float64(kb)/1024, 1), nil
}

// childEnv is the bench's environment without what would point ghostctl elsewhere
// ($NATS_URL, EDGE_* overrides of its config).
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "NATS_URL=") || strings.HasPrefix(kv, "EDGE_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// vmRSS reads the resident set size of a process, in KiB, from /proc/<pid>/status.
func vmRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("cannot read the resident memory of ghostctl: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fields := strings.Fields(rest)
			if len(fields) >= 1 {
				return strconv.ParseInt(fields[0], 10, 64)
			}
		}
	}
	return 0, errors.New("no VmRSS line in /proc/<pid>/status")
}

// ghostctl returns a ghostctl binary: the one installed beside the running program, else
// one built from the module's source into the run's directory as an agent ships
// (shipBuild): a binary's size is part of its resident memory, since the kernel reads the
// pages around each one touched.
func (e *runEnv) ghostctl(ctx context.Context) (string, error) {
	if exe, err := os.Executable(); err == nil {
		beside := filepath.Join(filepath.Dir(exe), "ghostctl")
		if fi, err := os.Stat(beside); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return beside, nil
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", errors.New("no ghostctl beside miragectl and no Go toolchain to build one")
	}
	root, err := moduleRoot(ctx, goBin)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(e.dir, "bin", "ghostctl")
	build := shipBuild(ctx, goBin, root, bin, "./cmd/ghostctl")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("CGO_ENABLED=0 %s in %s: %v: %s", strings.Join(build.Args, " "), root, err, bytes.TrimSpace(out))
	}
	return bin, nil
}

// moduleRoot finds the edgectl source: where this file was compiled from, else the module
// of the working directory (go env GOMOD).
func moduleRoot(ctx context.Context, goBin string) (string, error) {
	var candidates []string
	if _, file, _, ok := runtime.Caller(0); ok {
		candidates = append(candidates, filepath.Dir(filepath.Dir(file)))
	}
	if out, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output(); err == nil {
		if mod := strings.TrimSpace(string(out)); mod != "" && mod != os.DevNull {
			candidates = append(candidates, filepath.Dir(mod))
		}
	}
	for _, dir := range candidates {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(data), []byte("module "+modulePath)) {
			return dir, nil
		}
	}
	return "", errors.New("no ghostctl beside miragectl and no edgectl source found to build one (run from the repository)")
}

// shipBuild is the go command that builds pkg in the module at root as a release does:
// static (CGO_ENABLED=0: no libc mapped), without build paths (-trimpath), without symbol
// and debug tables (-s -w).
func shipBuild(ctx context.Context, goBin, root, out, pkg string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd
}
