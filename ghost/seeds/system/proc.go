package system

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"github.com/edgectl/edgectl/ghost/seeds/internal/result"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgectl/edgectl/bus"
)

// Uptime is the output of uptime.
type Uptime struct {
	Seconds float64 `json:"seconds"`
	Human   string  `json:"human"`
}

func (s *Seed) uptime() (bus.Result, error) {
	data, err := os.ReadFile(filepath.Join(s.proc, "uptime"))
	if err != nil {
		return result.Failed(result.StatusFailed, fmt.Errorf("uptime: %w", err))
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return result.Failed(result.StatusFailed, fmt.Errorf("uptime: %s/uptime is empty", s.proc))
	}
	secs, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || secs < 0 {
		return result.Failed(result.StatusFailed, fmt.Errorf("uptime: %s/uptime: %q is not a number of seconds", s.proc, fields[0]))
	}
	return result.JSON(Uptime{Seconds: secs, Human: human(time.Duration(secs) * time.Second)})
}

// human writes a duration as days, hours, minutes and seconds, leaving out leading zeros:
// "3d 4h 5m 6s", "5m 0s", "0s".
func human(d time.Duration) string {
	total := int64(d / time.Second)
	parts := []struct {
		n    int64
		unit string
	}{{total / 86400, "d"}, {total % 86400 / 3600, "h"}, {total % 3600 / 60, "m"}, {total % 60, "s"}}
	var out []string
	for i, p := range parts {
		if len(out) == 0 && p.n == 0 && i < len(parts)-1 {
			continue
		}
		out = append(out, fmt.Sprintf("%d%s", p.n, p.unit))
	}
	return strings.Join(out, " ")
}

// MemoryUsage is the output of memory_usage.
type MemoryUsage struct {
	TotalBytes     uint64 `json:"total_bytes"`
	AvailableBytes uint64 `json:"available_bytes"`
	UsedBytes      uint64 `json:"used_bytes"`
}

func (s *Seed) memoryUsage() (bus.Result, error) {
	data, err := os.ReadFile(filepath.Join(s.proc, "meminfo"))
	if err != nil {
		return result.Failed(result.StatusFailed, fmt.Errorf("memory_usage: %w", err))
	}
	kb := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// "MemTotal:       16318480 kB"
		name, rest, found := strings.Cut(sc.Text(), ":")
		if !found {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if n, err := strconv.ParseUint(f[0], 10, 64); err == nil {
			kb[name] = n
		}
	}
	total, found := kb["MemTotal"]
	if !found || total == 0 {
		return result.Failed(result.StatusFailed, fmt.Errorf("memory_usage: no MemTotal in %s/meminfo", s.proc))
	}
	avail, found := kb["MemAvailable"]
	if !found {
		// Kernels before 3.14 have no MemAvailable; this is the usual estimate.
		avail = kb["MemFree"] + kb["Buffers"] + kb["Cached"]
	}
	avail = min(avail, total)
	return result.JSON(MemoryUsage{TotalBytes: total * 1024, AvailableBytes: avail * 1024, UsedBytes: (total - avail) * 1024})
}

// Process is one entry of process_list.
type Process struct {
	PID  int    `json:"pid"`
	Name string `json:"name"`
}

func (s *Seed) processList(ctx context.Context) (bus.Result, error) {
	entries, err := os.ReadDir(s.proc)
	if err != nil {
		return result.Failed(result.StatusFailed, fmt.Errorf("process_list: %w", err))
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 && e.IsDir() {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	var procs []Process
	truncated := false
	for _, pid := range pids {
		if err := ctx.Err(); err != nil {
			return result.Failed(result.StatusFailed, err)
		}
		if len(procs) == s.maxProcs {
			truncated = true
			break
		}
		comm, err := os.ReadFile(filepath.Join(s.proc, strconv.Itoa(pid), "comm"))
		if err != nil {
			continue // the process ended since ReadDir
		}
		procs = append(procs, Process{PID: pid, Name: strings.TrimSuffix(string(comm), "\n")})
	}
	out, cut, err := result.Array(procs, bus.MaxOutput)
	if err != nil {
		return result.Failed(result.StatusFailed, err)
	}
	return bus.Result{Status: StatusOK, Stdout: out, Truncated: truncated || cut}, nil
}
