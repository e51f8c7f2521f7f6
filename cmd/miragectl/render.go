package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

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
// or error), then the summary line.
func printReport(w io.Writer, r *bus.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, res := range r.Results {
		exit := "-"
		if res.Outcome != bus.OutcomePending && res.Outcome != bus.OutcomeTimeout && res.Outcome != bus.OutcomeSkipped {
			exit = fmt.Sprint(res.ExitCode)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", res.GhostID, res.Outcome, exit, firstLine(res))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if r.ResultsOmitted > 0 {
		fmt.Fprintf(w, "(%d results not shown: the report holds what fits in one envelope; counts are exact)\n", r.ResultsOmitted)
	}
	_, err := fmt.Fprintf(w, "%s  (intent %s)\n", r.Summary, r.IntentID)
	return err
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
	return text
}

// reportExit maps a report's phase to the exit code.
func reportExit(r *bus.Report) error {
	if r.Phase == bus.PhaseFailed {
		return cli.Silent(cli.ExitNotSatisfied)
	}
	return nil
}
