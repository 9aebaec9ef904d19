package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// B4: the footprint of an idle agent (resident memory of its process and
// the plugin processes it keeps, CPU over a window) once it has enrolled
// and long-polls a real control plane, against a minimal Go long-poll
// client doing the same against a plain net/http server. Every run's
// pair runs at once, over the same window; the median of the runs is
// reported.

// minimalClient is the baseline, built as a program of its own (this
// harness's binary carries Postgres drivers and more, whose start-up
// memory would flatter the agent): GET the URL in a loop, as an agent
// polls.
const minimalClient = `package main

import (
	"net/http"
	"os"
	"time"
)

func main() {
	client := &http.Client{Timeout: 2 * time.Minute}
	for {
		resp, err := client.Get(os.Args[1])
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		_ = resp.Body.Close()
	}
}
`

// buildMinimalClient builds minimalClient into dir/minimal-client.
func buildMinimalClient(ctx context.Context, dir string) (string, error) {
	src := filepath.Join(dir, "minimal-client-src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(minimalClient), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module minimalclient\n\ngo 1.26\n"), 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "minimal-client")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the minimal client: %v\n%s", err, out)
	}
	return bin, nil
}

// holdingServer answers each GET after hold, like a long poll with no work.
func holdingServer(hold time.Duration) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(hold):
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusNoContent)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String() + "/poll", func() { _ = srv.Close() }, nil
}

// buildBinaries builds the control plane and the agent into dir.
func buildBinaries(ctx context.Context, dir string) error {
	for pkg, name := range map[string]string{"./controlplane/cmd/opsconductor": "opsconductor", "./agent/cmd/opsconductor-agent": "opsconductor-agent"} {
		out, err := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput()
		if err != nil {
			return fmt.Errorf("build %s: %v\n%s", pkg, err, out)
		}
	}
	return nil
}

// process is a started child, stopped (with its process group) by stop.
type process struct{ cmd *exec.Cmd }

func start(ctx context.Context, name string, args []string, env []string, logTo string) (*process, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	log, err := os.Create(logTo)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &process{cmd: cmd}, nil
}

func (p *process) stop() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// tree is pid and its descendants, from /proc.
func tree(pid int) []int {
	parent := map[int]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(n); len(f) > 1 {
			parent[n], _ = strconv.Atoi(f[1])
		}
	}
	out := []int{pid}
	for changed := true; changed; {
		changed = false
		for child, p := range parent {
			if slices.Contains(out, p) && !slices.Contains(out, child) {
				out, changed = append(out, child), true
			}
		}
	}
	return out
}

// statFields are the fields of /proc/PID/stat after the command (which
// is in parentheses and may hold spaces): state, parent, ...; nil when
// the process is gone.
func statFields(pid int) []string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	i := bytes.LastIndexByte(raw, ')')
	if err != nil || i < 0 || i+2 > len(raw) {
		return nil
	}
	return strings.Fields(string(raw[i+2:]))
}

// usage is the resident memory (bytes) and CPU time (seconds) of pids.
func usage(pids []int) (rss int64, cpu float64) {
	rss, _, cpu = usageSplit(pids)
	return rss, cpu
}

// usageSplit is usage with the resident memory's anonymous part (heap,
// stacks) apart from the file-backed rest (the binary's pages).
func usageSplit(pids []int) (rss, anon int64, cpu float64) {
	const clockTicks = 100 // USER_HZ on Linux
	for _, pid := range pids {
		if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
			for _, line := range strings.Split(string(raw), "\n") {
				if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
					kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
					rss += kb * 1024
				}
				if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
					kb, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
					anon += kb * 1024
				}
			}
		}
		if f := statFields(pid); len(f) > 12 {
			ut, _ := strconv.ParseFloat(f[11], 64)
			st, _ := strconv.ParseFloat(f[12], 64)
			cpu += (ut + st) / clockTicks
		}
	}
	return rss, anon, cpu
}

// startControlPlane starts `opsconductor server` on dbURL (plus env)
// and returns it with its URL and admin token once it is healthy. The
// address is picked free and then bound by the server, so another
// process (an outgoing connection of the fleet's, from the same
// ephemeral range) can take it in between: a start that fails is tried
// again on a new address, twice, and the last failure carries the tail
// of the server's log.
func startControlPlane(ctx context.Context, bin, dir, dbURL string, env ...string) (*process, string, string, error) {
	var err error
	for range 3 {
		var p *process
		var url, token, logFile string
		if p, url, token, logFile, err = startControlPlaneOnce(ctx, bin, dir, dbURL, env...); err == nil {
			return p, url, token, nil
		}
		log, _ := os.ReadFile(logFile)
		err = fmt.Errorf("%w; the server's log ends:\n%s", err, tail(log, 2000))
		fmt.Fprintf(os.Stderr, "bench: control plane did not start, trying again: %v\n", err)
	}
	return nil, "", "", err
}

func startControlPlaneOnce(ctx context.Context, bin, dir, dbURL string, env ...string) (*process, string, string, string, error) {
	addr := freeAddr()
	tokenFile := filepath.Join(dir, fmt.Sprintf("admin-token-%d", time.Now().UnixNano()))
	logFile := filepath.Join(dir, fmt.Sprintf("server-%s.log", filepath.Base(tokenFile)))
	p, err := start(ctx, filepath.Join(bin, "opsconductor"), []string{"server"}, append([]string{
		"OPSCONDUCTOR_ADDR=" + addr, "DATABASE_URL=" + dbURL, "OPSCONDUCTOR_INSECURE_HTTP=true",
		"OPSCONDUCTOR_BOOTSTRAP_TOKEN_FILE=" + tokenFile, "OPSCONDUCTOR_RATE_LIMIT=0", "OPSCONDUCTOR_LOG_LEVEL=warn",
	}, env...), logFile)
	if err != nil {
		return nil, "", "", logFile, err
	}
	url := "http://" + addr
	if err := waitFor(30*time.Second, "control plane start", func() (bool, error) {
		resp, err := http.Get(url + "/health")
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}); err != nil {
		p.stop()
		return nil, "", "", logFile, err
	}
	raw, err := os.ReadFile(tokenFile)
	if err != nil {
		p.stop()
		return nil, "", "", logFile, err
	}
	return p, url, strings.TrimSpace(string(raw)), logFile, nil
}

func apiJSON(method, url, token string, body, out any) error {
	var reader *bytes.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		reader = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, nil)
	if reader != nil {
		req, err = http.NewRequest(method, url, reader)
	}
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if reader != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		return fmt.Errorf("%s %s: HTTP %d: %s", method, url, resp.StatusCode, msg)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// listedAgent is an agent as GET /api/v1/agents lists it.
type listedAgent struct {
	Name   string `json:"name"`
	Status string `json:"status"`
}

func runB4(ctx context.Context, size string) ([]Row, error) {
	window, runs := 60*time.Second, 5
	if size == "tiny" {
		window, runs = 2*time.Second, 2 // two: the pairs run at once
	}
	dir, err := os.MkdirTemp("", "opsconductor-b4-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := buildBinaries(ctx, dir); err != nil {
		return nil, err
	}
	cp, url, admin, err := startControlPlane(ctx, dir, dir, "sqlite:"+filepath.Join(dir, "db"))
	if err != nil {
		return nil, err
	}
	defer cp.stop()
	pollURL, stopHolder, err := holdingServer(30 * time.Second)
	if err != nil {
		return nil, err
	}
	defer stopHolder()
	client, err := buildMinimalClient(ctx, dir)
	if err != nil {
		return nil, err
	}

	// The runs' pairs run at once, over the same window: idle processes
	// barely touch each other, and five windows one after another took
	// five minutes of `make bench`.
	type pair struct{ agent, base *process }
	var pairs []pair
	defer func() {
		for _, p := range pairs {
			p.agent.stop()
			p.base.stop()
		}
	}()
	for run := 0; run < runs; run++ {
		var tok struct {
			Token string `json:"token"`
		}
		if err := apiJSON("POST", url+"/api/v1/agents/tokens", admin, map[string]any{"description": "b4"}, &tok); err != nil {
			return nil, err
		}
		agent, err := start(ctx, filepath.Join(dir, "opsconductor-agent"), []string{"--server", url, "--join-token", tok.Token,
			"--state-dir", filepath.Join(dir, fmt.Sprintf("agent-%d", run)), "--name", fmt.Sprintf("b4-%d", run), "--log-level", "warn"},
			nil, filepath.Join(dir, fmt.Sprintf("agent-%d.log", run)))
		if err != nil {
			return nil, err
		}
		base, err := start(ctx, client, []string{pollURL}, nil, filepath.Join(dir, fmt.Sprintf("client-%d.log", run)))
		if err != nil {
			agent.stop()
			return nil, err
		}
		pairs = append(pairs, pair{agent, base})
	}
	// Connected and idle: every agent has enrolled and waits in a poll.
	for run := range pairs {
		for deadline := time.Now().Add(30 * time.Second); ; {
			var list struct {
				Agents []listedAgent `json:"agents"`
			}
			_ = apiJSON("GET", url+"/api/v1/agents", admin, nil, &list)
			if slices.Contains(list.Agents, listedAgent{Name: fmt.Sprintf("b4-%d", run), Status: "online"}) {
				break
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("agent-%d.log", run)))
				return nil, fmt.Errorf("agent b4-%d did not come online; its log:\n%s", run, log)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	time.Sleep(time.Second) // past start-up work
	aCPU0, bCPU0 := make([]float64, len(pairs)), make([]float64, len(pairs))
	for i, p := range pairs {
		_, aCPU0[i] = usage(tree(p.agent.cmd.Process.Pid))
		_, bCPU0[i] = usage(tree(p.base.cmd.Process.Pid))
	}
	time.Sleep(window)
	var agentRSS, agentCPU, baseRSS, baseCPU, agentAnon, baseAnon []float64
	procs := 0
	for i, p := range pairs {
		agentTree := tree(p.agent.cmd.Process.Pid)
		procs = len(agentTree)
		aRSS, aAnon, aCPU1 := usageSplit(agentTree)
		bRSS, bAnon, bCPU1 := usageSplit(tree(p.base.cmd.Process.Pid))
		agentAnon, baseAnon = append(agentAnon, float64(aAnon)/(1<<20)), append(baseAnon, float64(bAnon)/(1<<20))
		agentRSS, agentCPU = append(agentRSS, float64(aRSS)/(1<<20)), append(agentCPU, 100*(aCPU1-aCPU0[i])/window.Seconds())
		baseRSS, baseCPU = append(baseRSS, float64(bRSS)/(1<<20)), append(baseCPU, 100*(bCPU1-bCPU0[i])/window.Seconds())
	}
	spread := func(v []float64) string {
		return fmt.Sprintf("median of %d (min %.2f, max %.2f), %s window", len(v), slices.Min(v), slices.Max(v), window)
	}
	rows := []Row{
		{Part: "b4", Case: "agent idle, long-polling", Metric: "rss", Value: medianOf(agentRSS), Unit: "MiB", Note: spread(agentRSS) + fmt.Sprintf("; %d processes (the agent and its plugins); target <= 15 MiB", procs)},
		{Part: "b4", Case: "agent idle, long-polling", Metric: "rss anonymous", Value: medianOf(agentAnon), Unit: "MiB", Note: "heap and stacks; the rest is the binary's pages"},
		{Part: "b4", Case: "agent idle, long-polling", Metric: "cpu", Value: medianOf(agentCPU), Unit: "% of a core", Note: spread(agentCPU)},
		{Part: "b4", Case: "minimal Go long-poll client", Metric: "rss", Value: medianOf(baseRSS), Unit: "MiB", Note: spread(baseRSS)},
		{Part: "b4", Case: "minimal Go long-poll client", Metric: "rss anonymous", Value: medianOf(baseAnon), Unit: "MiB"},
		{Part: "b4", Case: "minimal Go long-poll client", Metric: "cpu", Value: medianOf(baseCPU), Unit: "% of a core", Note: spread(baseCPU)},
	}
	if b := medianOf(baseRSS); b > 0 {
		rows = append(rows, Row{Part: "b4", Case: "agent / minimal client", Metric: "rss ratio", Value: medianOf(agentRSS) / b, Unit: "x"})
	}
	return rows, nil
}
