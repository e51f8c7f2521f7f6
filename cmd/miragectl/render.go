package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgectl/edgectl/bus"
	"github.com/edgectl/edgectl/cmd/internal/cli"
)

// printJSON writes v as one JSON object.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// printReport writes one line per target (ghost, outcome, exit code, first line of output
// or error), then the summary line; a plan's lines under a header per step.
func printReport(w io.Writer, r *bus.Report) error { return printReportSteps(w, r, nil) }

// printReportSteps is printReport with the names of a plan's steps (by index; nil or
// shorter when not known): the target lines of a report of more than one step go under a
// "step 2/3 apply:" line per step, so that a Ghost listed once per step reads as such.
func printReportSteps(w io.Writer, r *bus.Report, names []string) error {
	results := r.Results
	steps := planSteps(r, names)
	if steps > 1 {
		results = slices.Clone(results)
		slices.SortStableFunc(results, func(a, b bus.TargetResult) int { return a.Step - b.Step })
	}
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 4, 2, ' ', 0)
	for _, res := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", res.GhostID, res.Outcome, exitColumn(res), firstLine(res))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// A result without output (a pending one) would end its line in padding.
	i := 0
	for _, line := range strings.SplitAfter(table.String(), "\n") {
		if line == "" {
			continue
		}
		if steps > 1 && (i == 0 || results[i].Step != results[i-1].Step) {
			if _, err := io.WriteString(w, stepHeader(results[i].Step, steps, names)+"\n"); err != nil {
				return err
			}
		}
		i++
		if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+"\n"); err != nil {
			return err
		}
	}
	return printReportEnd(w, r)
}

// printReportEnd writes what follows a report's target lines: how many results it could
// not hold, the targets that did not answer, and the summary line with the intent id.
func printReportEnd(w io.Writer, r *bus.Report) error {
	if r.ResultsOmitted > 0 {
		fmt.Fprintf(w, "(%d results not shown: the report holds what fits in one envelope; counts are exact)\n", r.ResultsOmitted)
	}
	if line := noResponse(r); line != "" {
		fmt.Fprintln(w, line)
	}
	_, err := fmt.Fprintf(w, "%s  (intent %s)\n", r.Summary, r.IntentID)
	return err
}

// planSteps is how many steps a report's intent has, as far as its results and the names
// given tell: 1 for an intent without a plan (every result is step 0).
func planSteps(r *bus.Report, names []string) int {
	n := len(names)
	for _, res := range r.Results {
		n = max(n, res.Step+1)
	}
	return max(n, 1)
}

// stepHeader is the line above a plan step's target lines: "step 2/3 apply:", or
// "step 2/3:" for a step without a name. A name is printed as printable text.
func stepHeader(step, steps int, names []string) string {
	h := fmt.Sprintf("step %d/%d", step+1, steps)
	if step < len(names) && names[step] != "" {
		h += " " + printable(names[step])
	}
	return h + ":"
}

// exitColumn is a result's exit code, or "-" when no process exited: the command was not
// run or not answered (pending, timeout, expired, skipped), or was refused or cut short
// before a process gave an exit code (events then carry -1).
func exitColumn(res bus.TargetResult) string {
	switch res.Outcome {
	case bus.OutcomePending, bus.OutcomeTimeout, bus.OutcomeSkipped, bus.OutcomeExpired:
		return "-"
	}
	if res.ExitCode < 0 {
		return "-"
	}
	return fmt.Sprint(res.ExitCode)
}

// maxNoResponse caps the ghost ids named on the "no response from" line.
const maxNoResponse = 10

// noResponse names the targets whose outcome is timeout (no terminal event in time),
// capped: "no response from: a, b, c (+N more)". It is empty when every target answered.
func noResponse(r *bus.Report) string {
	var ids []string
	for _, res := range r.Results {
		if res.Outcome == bus.OutcomeTimeout {
			ids = append(ids, res.GhostID)
		}
	}
	// Counts are exact even when the report left results out.
	total := max(r.Counts.Timeout, len(ids))
	switch {
	case total == 0:
		return ""
	case len(ids) == 0:
		return fmt.Sprintf("no response from %d targets (not listed: the report holds what fits in one envelope)", total)
	}
	sort.Strings(ids)
	shown := ids[:min(len(ids), maxNoResponse)]
	line := "no response from: " + strings.Join(shown, ", ")
	if more := total - len(shown); more > 0 {
		line += fmt.Sprintf(" (+%d more)", more)
	}
	return line
}

// resultLine is one line of issue --jsonl: a target's result and its intent.
type resultLine struct {
	IntentID string `json:"intent_id"`
	// Step is always present (0 for the first step, and for an intent without a plan):
	// it shadows the result's own field, which leaves out step 0.
	Step int `json:"step"`
	bus.TargetResult
}

// ago renders how long ago t was, coarsely: "3s ago", "4m ago", "2h ago", "5d ago".
// localNow is this machine's clock (tests set it off the server's).
var localNow = time.Now

func ago(now, t time.Time) string {
	d := max(now.Sub(t), 0)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
	}
}

func firstLine(res bus.TargetResult) string {
	text := res.Stdout
	if res.Error != nil {
		text = fmt.Sprintf("[%d %s] %s", res.Error.Code, res.Error.Class, res.Error.Message)
	} else if strings.TrimSpace(text) == "" {
		text = res.Stderr
	}
	text = strings.TrimSpace(text)
	if i := strings.IndexByte(text, '\n'); i >= 0 {
		text = text[:i] + " …"
	}
	if len(text) > 160 {
		text, _ = bus.Cut(text, 157)
		text += "..."
	}
	return printable(text)
}

// printable escapes the characters that would drive a terminal rather than show (C0 and C1
// controls, DEL, bidirectional overrides): a seed's output, or a forged event's, must not
// clear the operator's screen, retitle the window or reorder what is shown.
func printable(s string) string {
	if strings.IndexFunc(s, steersTerminal) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case !steersTerminal(r):
			b.WriteRune(r)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			fmt.Fprintf(&b, `\u%04x`, r)
		}
	}
	return b.String()
}

func steersTerminal(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069)
}

// reportExit maps a report's phase to the exit code.
func reportExit(r *bus.Report) error {
	if r.Phase == bus.PhaseFailed {
		return cli.Silent(cli.ExitNotSatisfied)
	}
	return nil
}
