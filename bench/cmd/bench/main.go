// Command bench is the benchmark harness behind `make bench`: it runs the
// parts of docs/benchmarks.md, prints a table and writes
// bench-results.json. `-size tiny` runs each part once, small, so `make
// test` keeps the harness from rotting; `-size full` is the real run.
//
// Parts: b1 (SSH fan-out against Ansible and friends), b2 (dispatch
// latency, with River's pickup latency), b3 (throughput against River and
// the fork/exec ceiling), b4 (idle agent footprint), b5 (control-plane
// memory per agent) and b6 (scheduler lateness).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Row is one measured figure.
type Row struct {
	Part   string  `json:"part"`
	Case   string  `json:"case"`
	Metric string  `json:"metric"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Note   string  `json:"note,omitempty"`
}

// Results is what bench-results.json holds.
type Results struct {
	When    time.Time `json:"when"`
	Size    string    `json:"size"`
	Machine string    `json:"machine"`
	Rows    []Row     `json:"rows"`
}

var parts = map[string]func(ctx context.Context, size string) ([]Row, error){
	"b1": runB1,
	"b2": runB2,
	"b3": runB3,
	"b4": runB4,
	"b5": runB5,
	"b6": runB6,
}

func main() {
	part := flag.String("part", "all", "which part: all, or one of "+strings.Join(partNames(), ", "))
	size := flag.String("size", "full", "full (the real run) or tiny (each part once, small: for make test)")
	out := flag.String("out", "bench-results.json", "where to write the results")
	flag.Parse()
	if *size != "full" && *size != "tiny" {
		fmt.Fprintln(os.Stderr, "bench: -size must be full or tiny")
		os.Exit(2)
	}
	names := partNames()
	if *part != "all" {
		if _, ok := parts[*part]; !ok {
			fmt.Fprintf(os.Stderr, "bench: no part %q (have %s)\n", *part, strings.Join(names, ", "))
			os.Exit(2)
		}
		names = []string{*part}
	}
	// GOMAXPROCS is set explicitly (the CPU count unless the caller gives
	// one) for the harness and every Go process it starts (they inherit
	// it), and recorded with the results.
	if os.Getenv("GOMAXPROCS") == "" {
		_ = os.Setenv("GOMAXPROCS", strconv.Itoa(runtime.NumCPU()))
	}
	runtime.GOMAXPROCS(atoi(os.Getenv("GOMAXPROCS"), runtime.NumCPU()))
	ctx := context.Background()
	res := Results{When: time.Now().UTC(), Size: *size, Machine: fmt.Sprintf("%s/%s, %d CPUs, GOMAXPROCS=%d, %s", runtime.GOOS, runtime.GOARCH,
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())}
	for _, name := range names {
		start := time.Now()
		fmt.Fprintf(os.Stderr, "bench: %s (%s)...\n", name, *size)
		rows, err := parts[name](ctx, *size)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %s: %v\n", name, err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "bench: %s done in %s\n", name, time.Since(start).Round(time.Second))
		res.Rows = append(res.Rows, rows...)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PART\tCASE\tMETRIC\tVALUE\tNOTE")
	for _, r := range res.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s %s\t%s\n", r.Part, r.Case, r.Metric, format(r.Value), r.Unit, r.Note)
	}
	_ = tw.Flush()
	raw, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(*out, append(raw, '\n'), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "bench: write %s: %v\n", *out, err)
		os.Exit(1)
	}
}

// medianOf is the median of v (the upper one of an even count).
func medianOf(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func atoi(s string, def int) int {
	if n, err := strconv.Atoi(s); err == nil && n > 0 {
		return n
	}
	return def
}

func partNames() []string {
	var names []string
	for n := range parts {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func format(v float64) string {
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d", int64(v))
	}
	return fmt.Sprintf("%.2f", v)
}
