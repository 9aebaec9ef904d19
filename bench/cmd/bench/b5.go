package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/agent"
	"github.com/opsconductor/opsconductor/agent/executor"
	"github.com/opsconductor/opsconductor/agent/state"
)

// B5: the control plane's resident memory per connected agent, at 0,
// 1,000 and 5,000 agents long-polling it (on PostgreSQL), against plain
// net/http servers holding as many long polls over HTTP/1.1 and h2c.
// The agents are real agent.Agent values run inside this harness (one
// process, many agents: the control plane cannot tell), each with its
// own connection.

// memoryIdentity keeps a simulated agent's identity in memory.
type memoryIdentity struct {
	mu sync.Mutex
	id *state.Identity
}

func (m *memoryIdentity) Load() (state.Identity, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.id == nil {
		return state.Identity{}, state.ErrNoIdentity
	}
	return *m.id, nil
}

func (m *memoryIdentity) Save(id state.Identity) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.id = &id
	return nil
}

// holdServer is the baseline: a net/http server holding each request
// until it is told to stop, over HTTP/1.1 and (same port) h2c. GET
// /count answers how many it holds.
const holdServer = `package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
)

func main() {
	var held atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, held.Load()) })
	mux.HandleFunc("/poll", func(w http.ResponseWriter, r *http.Request) {
		held.Add(1)
		defer held.Add(-1)
		<-r.Context().Done()
	})
	srv := &http.Server{Handler: mux, Protocols: new(http.Protocols)}
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Fprintln(os.Stdout, ln.Addr().String())
	panic(srv.Serve(ln))
}
`

// buildProgram builds a one-file program (no dependencies) into dir.
func buildProgram(ctx context.Context, dir, name, source string) (string, error) {
	src := filepath.Join(dir, name+"-src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(source), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module "+name+"\n\ngo 1.26\n"), 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", name, err, out)
	}
	return bin, nil
}

// metricValue reads one unlabelled metric from a Prometheus text page.
func metricValue(url, name string) (float64, error) {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(deadline time.Duration, what string, cond func() (bool, error)) error {
	end := time.Now().Add(deadline)
	var last error
	for time.Now().Before(end) {
		ok, err := cond()
		if ok {
			return nil
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s: gave up after %s (%v)", what, deadline, last)
}

// fleet is a control plane on a fresh PostgreSQL database with n agents
// connected to it, each waiting in its long poll.
type fleet struct {
	url, admin, debugURL string
	pid                  int
	stop                 func()
}

// startFleet starts the control plane and n agents; agentOf gives agent
// i its executor and labels (nil: a shell, no labels).
func startFleet(ctx context.Context, bin, dir string, n int, agentOf func(i int) (executor.Executor, map[string]string)) (_ *fleet, err error) {
	var cleanups []func()
	f := &fleet{stop: func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}}
	defer func() {
		if err != nil {
			f.stop()
		}
	}()
	dbURL, drop, err := freshDatabase(ctx)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, drop)
	debugAddr := freeAddr()
	cp, url, admin, err := startControlPlane(ctx, bin, dir, dbURL, "OPSCONDUCTOR_DEBUG_ADDR="+debugAddr)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, cp.stop)
	f.url, f.admin, f.debugURL, f.pid = url, admin, "http://"+debugAddr, cp.cmd.Process.Pid
	var tok struct {
		Token string `json:"token"`
	}
	if err := apiJSON("POST", f.url+"/api/v1/agents/tokens", f.admin, map[string]any{"description": "bench"}, &tok); err != nil {
		return nil, err
	}

	agentsCtx, stopAgents := context.WithCancel(ctx)
	var wg sync.WaitGroup
	cleanups = append(cleanups, func() { stopAgents(); wg.Wait() })
	enrolling := make(chan struct{}, 50) // enrollments at once
	for i := 0; i < n; i++ {
		var exec executor.Executor = &executor.Shell{}
		var labels map[string]string
		if agentOf != nil {
			exec, labels = agentOf(i)
		}
		// Each agent its own connection, as separate hosts would have.
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
		a, err := agent.New(agent.Config{ServerURL: f.url, JoinToken: tok.Token, Name: fmt.Sprintf("bench-%05d", i), Labels: labels,
			PollWait: 30 * time.Second}, &memoryIdentity{}, exec, client, zap.NewNop())
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		enrolling <- struct{}{}
		go func() {
			defer wg.Done()
			time.AfterFunc(2*time.Second, func() { <-enrolling })
			_ = a.Run(agentsCtx)
		}()
	}
	if err := waitFor(5*time.Minute, fmt.Sprintf("%d agents waiting in a poll", n), func() (bool, error) {
		v, err := metricValue(f.url, "opsconductor_agent_polls_waiting")
		return err == nil && int(v) >= n, fmt.Errorf("%v waiting (%v)", v, err)
	}); err != nil {
		return nil, err
	}
	return f, nil
}

// freeAddr is a loopback address with a port free right now.
func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// controlPlaneRSS connects n agents and returns the control plane's
// resident memory once all of them wait in a poll, with what its Go
// runtime says of its memory. With profile set it also prints the top of
// its heap profile.
func controlPlaneRSS(ctx context.Context, bin, dir string, n int, profile bool) (float64, map[string]float64, error) {
	f, err := startFleet(ctx, bin, dir, n, nil)
	if err != nil {
		return 0, nil, err
	}
	defer f.stop()
	time.Sleep(2 * time.Second)
	rss, _ := usage([]int{f.pid})
	// What the Go runtime says the memory is (the Prometheus Go collector).
	runtimeMem := map[string]float64{}
	for _, m := range []string{"go_memstats_stack_inuse_bytes", "go_memstats_heap_inuse_bytes", "go_goroutines"} {
		if v, err := metricValue(f.url, m); err == nil {
			runtimeMem[m] = v
		}
	}
	if profile {
		if err := heapTop(ctx, f.debugURL, filepath.Join(dir, fmt.Sprintf("heap-%d.pb.gz", n)), n); err != nil {
			return 0, nil, err
		}
	}
	return float64(rss) / (1 << 20), runtimeMem, nil
}

// heapTop fetches the control plane's heap profile and prints the top of
// it (in-use space) to standard error, for docs/benchmarks.md.
func heapTop(ctx context.Context, debugURL, file string, n int) error {
	return profileTop(ctx, debugURL+"/debug/pprof/heap?gc=1", file, []string{"-top", "-inuse_space", "-nodecount=15"},
		fmt.Sprintf("b5: heap of the control plane with %d agents (go tool pprof -top -inuse_space)", n))
}

// profileTop fetches a profile from url into file and prints what `go
// tool pprof` says of it (with args) to standard error under title.
func profileTop(ctx context.Context, url, file string, args []string, title string) error {
	resp, err := http.Get(url)
	if err != nil {
		return fmt.Errorf("%s: %w", title, err)
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	f.Close()
	out, err := exec.CommandContext(ctx, "go", append(append([]string{"tool", "pprof"}, args...), file)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go tool pprof: %v\n%s", err, out)
	}
	fmt.Fprintf(os.Stderr, "bench: %s:\n%s", title, out)
	return nil
}

// baselineRSS starts the plain server and holds n long polls on it over
// HTTP/1.1 (a connection each) or h2c (streams on shared connections).
func baselineRSS(ctx context.Context, bin string, n int, h2c bool) (float64, error) {
	cmd := exec.CommandContext(ctx, bin)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return 0, err
	}
	url := "http://" + strings.TrimSpace(line)
	pollCtx, stop := context.WithCancel(ctx)
	defer stop()
	var started atomic.Int64
	transport := &http.Transport{MaxIdleConnsPerHost: 1, Protocols: new(http.Protocols)}
	if h2c {
		transport.Protocols.SetUnencryptedHTTP2(true)
	} else {
		transport.Protocols.SetHTTP1(true)
	}
	for i := 0; i < n; i++ {
		client := &http.Client{Transport: transport}
		if !h2c {
			client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}} // a connection each
		}
		go func() {
			req, _ := http.NewRequestWithContext(pollCtx, http.MethodGet, url+"/poll", nil)
			started.Add(1)
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	if err := waitFor(2*time.Minute, fmt.Sprintf("%d polls held", n), func() (bool, error) {
		resp, err := http.Get(url + "/count")
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		var held int
		_, err = fmt.Fscan(resp.Body, &held)
		return err == nil && held >= n, fmt.Errorf("%d held", held)
	}); err != nil {
		return 0, err
	}
	time.Sleep(2 * time.Second)
	rss, _ := usage([]int{cmd.Process.Pid})
	return float64(rss) / (1 << 20), nil
}

func runB5(ctx context.Context, size string) ([]Row, error) {
	counts := []int{0, 1000, 5000}
	if size == "tiny" {
		counts = []int{0, 20}
	}
	dir, err := os.MkdirTemp("", "opsconductor-b5-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := buildBinaries(ctx, dir); err != nil {
		return nil, err
	}
	holder, err := buildProgram(ctx, dir, "hold-server", holdServer)
	if err != nil {
		return nil, err
	}
	var rows []Row
	rss := map[string]map[int]float64{"opsconductor": {}, "net/http HTTP/1.1": {}, "net/http h2c": {}}
	runtimeMem := map[int]map[string]float64{}
	for _, n := range counts {
		fmt.Fprintf(os.Stderr, "bench: b5: %d agents\n", n)
		if rss["opsconductor"][n], runtimeMem[n], err = controlPlaneRSS(ctx, dir, dir, n, n == counts[len(counts)-1]); err != nil {
			return nil, err
		}
		if rss["net/http HTTP/1.1"][n], err = baselineRSS(ctx, holder, n, false); err != nil {
			return nil, err
		}
		if rss["net/http h2c"][n], err = baselineRSS(ctx, holder, n, true); err != nil {
			return nil, err
		}
	}
	for _, who := range []string{"opsconductor", "net/http HTTP/1.1", "net/http h2c"} {
		for _, n := range counts {
			rows = append(rows, Row{Part: "b5", Case: fmt.Sprintf("%s, %d long polls", who, n), Metric: "rss", Value: rss[who][n], Unit: "MiB"})
		}
		top := counts[len(counts)-1]
		perAgent := (rss[who][top] - rss[who][0]) * 1024 / float64(top)
		rows = append(rows, Row{Part: "b5", Case: who, Metric: "per long poll", Value: perAgent, Unit: "KiB", Note: fmt.Sprintf("(rss at %d - rss at 0) / %d", top, top)})
	}
	top := counts[len(counts)-1]
	// Where the control plane's memory per agent goes, as its runtime sees it.
	for _, m := range []struct{ name, label string }{
		{"go_memstats_stack_inuse_bytes", "goroutine stacks per agent"},
		{"go_memstats_heap_inuse_bytes", "heap in use per agent"},
	} {
		per := (runtimeMem[top][m.name] - runtimeMem[0][m.name]) / 1024 / float64(top)
		rows = append(rows, Row{Part: "b5", Case: "opsconductor", Metric: m.label, Value: per, Unit: "KiB", Note: m.name})
	}
	rows = append(rows, Row{Part: "b5", Case: "opsconductor", Metric: "goroutines per agent",
		Value: (runtimeMem[top]["go_goroutines"] - runtimeMem[0]["go_goroutines"]) / float64(top), Unit: ""})
	if base := rss["net/http HTTP/1.1"][top] - rss["net/http HTTP/1.1"][0]; base > 0 {
		rows = append(rows, Row{Part: "b5", Case: "opsconductor / net/http HTTP/1.1", Metric: "per-agent ratio",
			Value: (rss["opsconductor"][top] - rss["opsconductor"][0]) / base, Unit: "x", Note: "target <= 2"})
	}
	return rows, nil
}
