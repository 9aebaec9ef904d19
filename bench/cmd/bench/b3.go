package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opsconductor/opsconductor/agent/executor"
)

// B3: throughput. 10,000 tasks over 100 agents (100 executions, each an
// inline job of one action on all 100 agents, selected by a label), on a
// control plane on a fresh PostgreSQL database for each run; the agents
// are real agent.Agent values in the harness with the default capacity
// (4 tasks at once), as in B2 and B5. Two executors: an in-process no-op
// that writes one line of output (so the task is a claim, its output and
// its completion: pure orchestration cost), and the agent's real shell
// executor running /bin/true (that is /bin/sh -c /bin/true: the fork and
// exec included). Tasks/s run from the first API call to the last task's
// completion as the control plane recorded it: the harness waits on the
// control plane's completed-tasks counter (/metrics, so the waiting costs
// the database nothing), then lists the executions and takes the latest
// end_time (stamped in the transaction that completes an execution's last
// task, just before it commits).
//
// The baselines, measured in the same run and interleaved with ours (A B
// C D, A B C D, ...): River (bench/river, a module of its own) working as
// many pre-inserted no-op jobs with 100 workers and the fetch tuning of
// `river bench` (FetchCooldown 2 ms, FetchPollInterval 20 ms), and the
// fork/exec ceiling: /bin/true run with os/exec from 100 goroutines (as
// many as agents), as many times as there are tasks; and, to tell the
// shell's share, the same for /bin/sh -c /bin/true. GOMAXPROCS is pinned
// by the harness for itself and every process it starts (main).

// b3Noop is the no-op executor: one line of output, success.
type b3Noop struct{}

func (b3Noop) Execute(_ context.Context, _ executor.Action, stdout, _ io.Writer) executor.Result {
	_, _ = io.WriteString(stdout, "ok\n")
	return executor.Result{Status: executor.StatusSucceeded}
}

// b3Size is what one size of the part runs.
type b3Size struct {
	agents, executions, runs int // tasks = agents * executions
}

func (s b3Size) tasks() int { return s.agents * s.executions }

// buildRiver builds bench/river (a module of its own) into dir.
func buildRiver(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "river-bench")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Join("bench", "river")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build bench/river: %v\n%s", err, out)
	}
	return bin, nil
}

// riverRun runs the River program on a fresh database with args and
// decodes what it prints into out. It returns the CPU time (seconds) the
// program and PostgreSQL used meanwhile: the migrations and inserts
// included.
func riverRun(ctx context.Context, bin string, out any, args ...string) (river, pg float64, err error) {
	dbURL, drop, err := freshDatabase(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer drop()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-database-url", dbURL}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	pg0 := postgresCPU()
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("river %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	pg = postgresCPU() - pg0
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		return 0, 0, fmt.Errorf("river %s: %v: %q", strings.Join(args, " "), err, stdout.String())
	}
	return (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds(), pg, nil
}

// listedExecution is an execution as GET /api/v1/executions lists it.
type listedExecution struct {
	ID         string         `json:"id"`
	Status     string         `json:"status"`
	TaskCounts map[string]int `json:"taskCounts"`
	EndTime    time.Time      `json:"endTime"`
}

// tasksCompleted is how many tasks agents reported finished to the control
// plane (opsconductor_tasks_completed_total, all outcomes): read from
// /metrics, it costs the database nothing while the harness waits.
func tasksCompleted(base string) (int, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	total := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "opsconductor_tasks_completed_total{"); ok {
			_, v, _ := strings.Cut(rest, "} ")
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, err
			}
			total += n
		}
	}
	return int(total), sc.Err()
}

// executionsEnded waits until want tasks have completed in all, then
// returns the n executions created since t0, which must all have ended.
func executionsEnded(f *fleet, t0 time.Time, n, want int, timeout time.Duration) ([]listedExecution, error) {
	if err := waitFor(timeout, fmt.Sprintf("%d tasks completed", want), func() (bool, error) {
		done, err := tasksCompleted(f.url)
		return err == nil && done >= want, fmt.Errorf("%d completed (%v)", done, err)
	}); err != nil {
		return nil, err
	}
	q := url.Values{"pageSize": {"500"}, "since": {t0.UTC().Format(time.RFC3339Nano)}}
	var got []listedExecution
	err := waitFor(30*time.Second, fmt.Sprintf("%d executions ended", n), func() (bool, error) {
		got = got[:0]
		q.Del("pageToken")
		for {
			var list struct {
				Executions    []listedExecution `json:"executions"`
				NextPageToken string            `json:"nextPageToken"`
			}
			if err := apiJSON("GET", f.url+"/api/v1/executions?"+q.Encode(), f.admin, nil, &list); err != nil {
				return false, err
			}
			got = append(got, list.Executions...)
			if list.NextPageToken == "" {
				break
			}
			q.Set("pageToken", list.NextPageToken)
		}
		ended := 0
		for _, e := range got {
			if e.Status == "succeeded" || e.Status == "failed" || e.Status == "cancelled" {
				ended++
			}
		}
		return len(got) == n && ended == n, fmt.Errorf("%d of %d listed, %d ended", len(got), n, ended)
	})
	return got, err
}

// cpuTicks reads a process's CPU time from /proc (seconds): its own, and
// with children that it has waited for.
func cpuTicks(pid int) (own, children float64) {
	const clockTicks = 100 // USER_HZ on Linux
	f := statFields(pid)
	if len(f) < 15 {
		return 0, 0
	}
	v := func(i int) float64 { x, _ := strconv.ParseFloat(f[i], 64); return x / clockTicks }
	return v(11) + v(12), v(13) + v(14)
}

// postgresCPU is the CPU time PostgreSQL has used: its live processes,
// plus what the postmaster's exited children (closed connections) used.
func postgresCPU() float64 {
	entries, _ := os.ReadDir("/proc")
	var total float64
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		own, children := cpuTicks(pid)
		total += own
		if parent := parentComm(pid); parent != "postgres" {
			total += children // the postmaster
		}
	}
	return total
}

// parentComm is the command name of pid's parent.
func parentComm(pid int) string {
	f := statFields(pid)
	if len(f) < 2 {
		return ""
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%s/comm", f[1]))
	return strings.TrimSpace(string(comm))
}

// b3Run is one measured run of ours: tasks/s, and the CPU time per task
// (µs) of the control plane, of the harness (the agents, their executor
// and its child processes) and of PostgreSQL.
type b3Run struct {
	perSecond               float64
	cpuCP, cpuAgents, cpuPG float64
}

// oursThroughput starts a fleet of agents running ex, creates the
// executions of command on all of them, and measures tasks/s. With
// profile > 0 it prints the control plane's CPU profile over that many
// seconds, from 5 s after the first API call.
func oursThroughput(ctx context.Context, dir string, sz b3Size, ex executor.Executor, command string, profile int) (b3Run, error) {
	f, err := startFleet(ctx, dir, dir, sz.agents, func(int) (executor.Executor, map[string]string) {
		return ex, map[string]string{"bench": "b3"}
	})
	if err != nil {
		return b3Run{}, err
	}
	defer f.stop()
	body := map[string]any{"inlineJob": map[string]any{"name": "b3", "targets": []map[string]any{{"selector": "bench=b3"}},
		"actions": []map[string]any{{"command": command}}}}
	// Warm up: one execution on every agent, so first-use costs
	// (connections, prepared statements) are not measured.
	warm := time.Now()
	if err := apiJSON("POST", f.url+"/api/v1/executions", f.admin, body, nil); err != nil {
		return b3Run{}, err
	}
	if _, err := executionsEnded(f, warm, 1, sz.agents, time.Minute); err != nil {
		return b3Run{}, err
	}
	time.Sleep(500 * time.Millisecond)

	var profiled sync.WaitGroup
	if profile > 0 {
		// A window of the run, from 5 s in: its steady part. Profiling
		// at 100 Hz costs the control plane about 1% of its time.
		profiled.Add(1)
		go func() {
			defer profiled.Done()
			time.Sleep(5 * time.Second)
			title := fmt.Sprintf("b3: CPU of the control plane, %d tasks over %d agents, %s, %d s from 5 s in (go tool pprof -top)", sz.tasks(), sz.agents, command, profile)
			if err := profileTop(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", f.debugURL, profile), filepath.Join(dir, "b3-cpu.pb.gz"),
				[]string{"-top", "-nodecount=30"}, title); err != nil {
				fmt.Fprintf(os.Stderr, "bench: b3: cpu profile: %v\n", err)
			}
			out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=60", filepath.Join(dir, "b3-cpu.pb.gz")).CombinedOutput()
			fmt.Fprintf(os.Stderr, "bench: %s, by cumulative time (%v):\n%s", title, err, out)
		}()
	}
	cp0, _ := cpuTicks(f.pid)
	self0, kids0 := cpuTicks(os.Getpid())
	pg0 := postgresCPU()
	t0 := time.Now()
	// The executions are created by 4 callers at once: the API's cost is
	// part of the figure, not a serial bottleneck of the harness.
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(sz.executions) {
				if err := apiJSON("POST", f.url+"/api/v1/executions", f.admin, body, nil); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return b3Run{}, err
	}
	list, err := executionsEnded(f, t0, sz.executions, sz.agents+sz.tasks(), 15*time.Minute)
	if err != nil {
		return b3Run{}, err
	}
	cp1, _ := cpuTicks(f.pid)
	self1, kids1 := cpuTicks(os.Getpid())
	pg1 := postgresCPU()
	profiled.Wait()
	var last time.Time
	done := 0
	for _, e := range list {
		if e.Status != "succeeded" {
			return b3Run{}, fmt.Errorf("execution %s ended %s (%v)", e.ID, e.Status, e.TaskCounts)
		}
		done += e.TaskCounts["succeeded"]
		if e.EndTime.After(last) {
			last = e.EndTime
		}
	}
	if done != sz.tasks() {
		return b3Run{}, fmt.Errorf("%d tasks succeeded, want %d", done, sz.tasks())
	}
	elapsed := last.Sub(t0)
	perTask := func(s float64) float64 { return s * 1e6 / float64(done) }
	return b3Run{perSecond: float64(done) / elapsed.Seconds(),
		cpuCP: perTask(cp1 - cp0), cpuAgents: perTask(self1 - self0 + kids1 - kids0), cpuPG: perTask(pg1 - pg0)}, nil
}

// forkCeiling runs name n times with os/exec from workers goroutines and
// returns runs a second.
func forkCeiling(ctx context.Context, n, workers int, name string, args ...string) (float64, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	t0 := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := exec.CommandContext(ctx, name, args...).Run(); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return float64(n) / time.Since(t0).Seconds(), nil
}

// riverThroughput is what bench/river prints in throughput mode.
type riverThroughput struct {
	JobsPerSecond float64 `json:"jobsPerSecond"`
	Seconds       float64 `json:"seconds"`
}

func runB3(ctx context.Context, size string) ([]Row, error) {
	sz := b3Size{agents: 100, executions: 100, runs: 5}
	if size == "tiny" {
		sz = b3Size{agents: 2, executions: 25, runs: 1}
	}
	// For a closer look while working on throughput:
	// BENCH_B3_EXECUTIONS=20 runs fewer tasks, BENCH_B3_RUNS=1 one round,
	// BENCH_B3_ONLY=noop only ours with the no-op executor.
	sz.executions = atoi(os.Getenv("BENCH_B3_EXECUTIONS"), sz.executions)
	sz.runs = atoi(os.Getenv("BENCH_B3_RUNS"), sz.runs)
	onlyNoop := os.Getenv("BENCH_B3_ONLY") == "noop"
	dir, err := os.MkdirTemp("", "opsconductor-b3-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := buildBinaries(ctx, dir); err != nil {
		return nil, err
	}
	river, err := buildRiver(ctx, dir)
	if err != nil {
		return nil, err
	}
	shell := &executor.Shell{}
	const (
		noop    = "ours, no-op"
		trueCmd = "ours, /bin/true"
		rv      = "River, no-op"
		ceil    = "fork/exec ceiling, /bin/true"
		ceilSh  = "fork/exec ceiling, /bin/sh -c /bin/true"
	)
	rates := map[string][]float64{}
	ours := map[string][]b3Run{}
	var riverCPU, riverPG []float64 // CPU per job, µs: the River program, PostgreSQL
	// Five rounds, or as many as fit in the part's share of `make bench`
	// (at least three): a round of this part takes about 90 s here.
	const budget = 9 * time.Minute
	start := time.Now()
	for run := 0; run < sz.runs; run++ {
		if run >= 3 && time.Since(start)*time.Duration(run+1)/time.Duration(run) > budget {
			fmt.Fprintf(os.Stderr, "bench: b3: %d runs (another would pass %s)\n", run, budget)
			break
		}
		// The control plane's CPU profile is taken in the first run of
		// ours, no-op (full size only: it needs a run of some seconds).
		profile := 0
		if size == "full" && run == 0 {
			profile = 20
		}
		fmt.Fprintf(os.Stderr, "bench: b3: run %d of %d\n", run+1, sz.runs)
		for _, c := range []struct {
			name    string
			exec    executor.Executor
			command string
		}{{noop, b3Noop{}, "b3-noop"}, {trueCmd, shell, "/bin/true"}} {
			if onlyNoop && c.name != noop {
				continue
			}
			r, err := oursThroughput(ctx, dir, sz, c.exec, c.command, profile)
			profile = 0
			if err != nil {
				return nil, fmt.Errorf("%s: %w", c.name, err)
			}
			fmt.Fprintf(os.Stderr, "bench: b3: %s: %.0f tasks/s\n", c.name, r.perSecond)
			rates[c.name], ours[c.name] = append(rates[c.name], r.perSecond), append(ours[c.name], r)
		}
		if onlyNoop {
			continue
		}
		var rt riverThroughput
		rCPU, pgCPU, err := riverRun(ctx, river, &rt, "-mode", "throughput", "-jobs", strconv.Itoa(sz.tasks()), "-workers", "100")
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(os.Stderr, "bench: b3: %s: %.0f jobs/s\n", rv, rt.JobsPerSecond)
		rates[rv] = append(rates[rv], rt.JobsPerSecond)
		riverCPU, riverPG = append(riverCPU, rCPU*1e6/float64(sz.tasks())), append(riverPG, pgCPU*1e6/float64(sz.tasks()))
		for _, c := range []struct {
			name string
			args []string
		}{{ceil, []string{"/bin/true"}}, {ceilSh, []string{"/bin/sh", "-c", "/bin/true"}}} {
			r, err := forkCeiling(ctx, sz.tasks(), 100, c.args[0], c.args[1:]...)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "bench: b3: %s: %.0f/s\n", c.name, r)
			rates[c.name] = append(rates[c.name], r)
		}
	}
	spread := func(v []float64) string {
		return fmt.Sprintf("median of %d (min %.0f, max %.0f)", len(v), slices.Min(v), slices.Max(v))
	}
	n := sz.tasks()
	where := fmt.Sprintf("%s tasks, %d agents (capacity 4)", thousands(n), sz.agents)
	cpuRows := func(c string) []Row {
		cpu := func(pick func(b3Run) float64) float64 {
			var v []float64
			for _, r := range ours[c] {
				v = append(v, pick(r))
			}
			return medianOf(v)
		}
		return []Row{
			{Part: "b3", Case: c, Metric: "CPU per task: control plane", Value: cpu(func(r b3Run) float64 { return r.cpuCP }), Unit: "µs", Note: "median of the runs"},
			{Part: "b3", Case: c, Metric: "CPU per task: agents", Value: cpu(func(r b3Run) float64 { return r.cpuAgents }), Unit: "µs", Note: "the harness: agents, executor, child processes"},
			{Part: "b3", Case: c, Metric: "CPU per task: PostgreSQL", Value: cpu(func(r b3Run) float64 { return r.cpuPG }), Unit: "µs",
				Note: "all of the server's processes during the run"},
		}
	}
	if onlyNoop {
		return append([]Row{{Part: "b3", Case: noop, Metric: "throughput", Value: medianOf(rates[noop]), Unit: "tasks/s", Note: spread(rates[noop]) + "; " + where}},
			cpuRows(noop)...), nil
	}
	rows := []Row{
		{Part: "b3", Case: noop, Metric: "throughput", Value: medianOf(rates[noop]), Unit: "tasks/s", Note: spread(rates[noop]) + "; " + where + "; target >= 5,000"},
		{Part: "b3", Case: trueCmd, Metric: "throughput", Value: medianOf(rates[trueCmd]), Unit: "tasks/s", Note: spread(rates[trueCmd]) + "; " + where + ", shell executor"},
		{Part: "b3", Case: rv, Metric: "throughput", Value: medianOf(rates[rv]), Unit: "jobs/s",
			Note: spread(rates[rv]) + fmt.Sprintf("; v0.51.2, %s jobs pre-inserted, 100 workers, FetchCooldown 2 ms, FetchPollInterval 20 ms (as `river bench`)", thousands(n))},
		{Part: "b3", Case: ceil, Metric: "throughput", Value: medianOf(rates[ceil]), Unit: "runs/s", Note: spread(rates[ceil]) + fmt.Sprintf("; os/exec, %s runs from 100 goroutines", thousands(n))},
		{Part: "b3", Case: ceilSh, Metric: "throughput", Value: medianOf(rates[ceilSh]), Unit: "runs/s", Note: spread(rates[ceilSh]) + "; what the shell executor runs"},
	}
	for _, c := range []string{noop, trueCmd} {
		rows = append(rows, cpuRows(c)...)
	}
	rows = append(rows,
		Row{Part: "b3", Case: rv, Metric: "CPU per job: River", Value: medianOf(riverCPU), Unit: "µs", Note: "median of the runs; the program's whole life: migrations and inserts included"},
		Row{Part: "b3", Case: rv, Metric: "CPU per job: PostgreSQL", Value: medianOf(riverPG), Unit: "µs", Note: "the same"},
	)
	if r := medianOf(rates[rv]); r > 0 {
		ratio := medianOf(rates[noop]) / r
		rows = append(rows, Row{Part: "b3", Case: "ours no-op / River", Metric: "throughput ratio", Value: ratio, Unit: "x",
			Note: fmt.Sprintf("%.3gx; target >= 0.3 (our task: a claim, output and a completion; River's job: a claim and a completion)", ratio)})
	}
	if r := medianOf(rates[ceil]); r > 0 {
		ratio := medianOf(rates[trueCmd]) / r
		rows = append(rows, Row{Part: "b3", Case: "ours /bin/true / fork/exec ceiling", Metric: "throughput ratio", Value: ratio, Unit: "x",
			Note: fmt.Sprintf("%.3gx; target >= 0.8; against /bin/sh -c /bin/true: %.3gx", ratio, medianOf(rates[trueCmd])/medianOf(rates[ceilSh]))})
	}
	return rows, nil
}

// riverLatency is what bench/river prints in latency mode.
type riverLatency struct {
	Received   int     `json:"received"`
	P50        float64 `json:"p50Ms"`
	P99        float64 `json:"p99Ms"`
	Max        float64 `json:"maxMs"`
	InsertP50  float64 `json:"insertP50Ms"`
	InsertP99  float64 `json:"insertP99Ms"`
	InsertRate float64 `json:"insertRate"`
}

// riverPickup measures River's insert-to-Work latency under a steady rate
// of single inserts (each on a fresh database): at B2's trickle of 20/s
// and at 2,000/s, with the tuned fetch settings and 100 workers. Its rows
// belong to B2, which compares its dispatch latency with them.
func riverPickup(ctx context.Context, size string) ([]Row, error) {
	cases := []struct{ rate, count int }{{20, 200}, {2000, 10000}}
	if size == "tiny" {
		cases = []struct{ rate, count int }{{20, 20}, {2000, 200}}
	}
	dir, err := os.MkdirTemp("", "opsconductor-river-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	river, err := buildRiver(ctx, dir)
	if err != nil {
		return nil, err
	}
	var rows []Row
	for _, c := range cases {
		fmt.Fprintf(os.Stderr, "bench: b2: River pickup at %d/s\n", c.rate)
		var l riverLatency
		if _, _, err := riverRun(ctx, river, &l, "-mode", "latency", "-rate", strconv.Itoa(c.rate), "-count", strconv.Itoa(c.count), "-workers", "100"); err != nil {
			return nil, err
		}
		name := fmt.Sprintf("River pickup, %s/s steady", thousands(c.rate))
		rows = append(rows,
			Row{Part: "b2", Case: name, Metric: "p50", Value: l.P50, Unit: "ms", Note: "v0.51.2, 100 workers, FetchCooldown 2 ms, FetchPollInterval 20 ms; from the Insert call to Work"},
			Row{Part: "b2", Case: name, Metric: "p99", Value: l.P99, Unit: "ms"},
			Row{Part: "b2", Case: name, Metric: "max", Value: l.Max, Unit: "ms",
				Note: fmt.Sprintf("%d of %d worked; inserts started at %.0f/s, an Insert call took p50 %.2f ms, p99 %.2f ms", l.Received, c.count, l.InsertRate, l.InsertP50, l.InsertP99)},
		)
	}
	return rows, nil
}

// thousands writes n with a comma between thousands (2,000).
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
