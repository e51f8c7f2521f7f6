package system

import (
	"context"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/ghost/seeds/internal/result"
)

// ID is the seed id of the system seed.
const ID = "seed.system"

// MaxProcesses caps the entries of process_list.
const MaxProcesses = 2000

// Result statuses.
const (
	StatusOK     = "ok"
	StatusFailed = "failed"
)

// Seed is seed.system. It is safe for concurrent use.
type Seed struct {
	dir      string // the file system disk_usage reports on
	proc     string // where procfs is mounted; a test points it at a fixture
	maxProcs int    // MaxProcesses; a test lowers it
}

// New returns a system seed whose disk_usage reports on the file system holding dir.
func New(dir string) *Seed { return &Seed{dir: dir, proc: "/proc", maxProcs: MaxProcesses} }

// Info declares the seed and its operations.
func (s *Seed) Info() bus.SeedInfo {
	op := func(name, desc string) bus.OperationInfo {
		return bus.OperationInfo{Name: name, Description: desc, Idempotent: true, Params: []bus.ParamInfo{}}
	}
	return bus.SeedInfo{
		ID:          ID,
		Name:        "System",
		Description: "Read-only facts about the host: hostname, uptime, disk, memory, processes.",
		Operations: []bus.OperationInfo{
			op("hostname", "Return the host name on stdout."),
			op("uptime", `Time since boot. Stdout is JSON {"seconds":<float>,"human":"3d 4h 5m 6s"}.`),
			op("disk_usage", `Usage of the file system holding the Ghost's state directory. Stdout is JSON {"path","total_bytes","free_bytes","used_bytes","used_percent"}; free is what an unprivileged user may still use and used_percent is used/(used+free), as df reports.`),
			op("memory_usage", `Memory from /proc/meminfo. Stdout is JSON {"total_bytes","available_bytes","used_bytes"}; used is total minus available.`),
			op("process_list", `Running processes. Stdout is a JSON array of {"pid":<int>,"name":<command name>}, sorted by pid, at most 2000 entries (truncated is set when more are left out).`),
		},
	}
}

// Execute runs one operation.
func (s *Seed) Execute(ctx context.Context, req *bus.SeedExecute) (bus.Result, error) {
	if req == nil {
		return result.Failed(result.StatusFailed, bus.Errorf(bus.CodeSemantic, "no seed.execute given"))
	}
	if err := ctx.Err(); err != nil {
		return result.Failed(result.StatusFailed, err)
	}
	if len(req.Args) > 0 {
		keys := slices.Sorted(maps.Keys(req.Args))
		return result.Failed(result.StatusFailed, bus.FieldError(bus.CodeSemantic, "args."+keys[0], "%s %s takes no params", ID, req.Operation))
	}
	switch req.Operation {
	case "hostname":
		h, err := os.Hostname()
		if err != nil {
			return result.Failed(result.StatusFailed, fmt.Errorf("hostname: %w", err))
		}
		return result.OK(h), nil
	case "uptime":
		return s.uptime()
	case "disk_usage":
		return s.diskUsage()
	case "memory_usage":
		return s.memoryUsage()
	case "process_list":
		return s.processList(ctx)
	default:
		return result.Failed(result.StatusFailed, bus.FieldError(bus.CodeSemantic, "operation", "%s has no operation %q", ID, req.Operation))
	}
}

// DiskUsage is the output of disk_usage.
type DiskUsage struct {
	Path        string  `json:"path"`
	TotalBytes  uint64  `json:"total_bytes"`
	FreeBytes   uint64  `json:"free_bytes"`
	UsedBytes   uint64  `json:"used_bytes"`
	UsedPercent float64 `json:"used_percent"`
}

func (s *Seed) diskUsage() (bus.Result, error) {
	total, free, used, err := statfs(s.dir)
	if err != nil {
		return result.Failed(result.StatusFailed, fmt.Errorf("disk_usage: %w", err))
	}
	u := DiskUsage{Path: s.dir, TotalBytes: total, FreeBytes: free, UsedBytes: used}
	u.UsedPercent = percent(u.UsedBytes, u.UsedBytes+u.FreeBytes)
	return result.JSON(u)
}

// percent returns part/whole in percent, rounded to one decimal; 0 for an empty whole.
func percent(part, whole uint64) float64 {
	if whole == 0 {
		return 0
	}
	return math.Round(float64(part)/float64(whole)*1000) / 10
}
