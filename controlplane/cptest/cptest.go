// Package cptest starts the real thing for end-to-end tests: it builds the
// opsconductor and opsconductor-agent binaries once per test binary, runs
// control-plane and agent processes on free loopback ports, waits until
// they are ready, stops them when the test ends, and speaks REST to them.
package cptest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/opsconductor/opsconductor/agent/transport"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds both binaries (once per test process) and returns the
// directory holding them.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "opsconductor-bin-")
		if buildErr != nil {
			return
		}
		root := moduleRoot()
		for pkg, name := range map[string]string{
			"./controlplane/cmd/opsconductor": "opsconductor",
			"./agent/cmd/opsconductor-agent":  "opsconductor-agent",
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name), pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// ModuleRoot is the repository's root directory, for tests that read
// files outside Go packages (deploy/, docs/).
func ModuleRoot() string { return moduleRoot() }

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// FreeAddr returns a loopback address with a port free right now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Process is a started binary whose output goes to a log file that the
// test prints when it fails.
type Process struct {
	Name string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	mu   *sync.Mutex
	done chan struct{}
}

type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// Start runs bin with args and env (added to this process's environment)
// and stops it (SIGTERM, then SIGKILL after 10s) when the test ends.
func Start(t testing.TB, name, bin string, args []string, env map[string]string) *Process {
	t.Helper()
	p := &Process{Name: name, log: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = os.Environ()
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout = lockedWriter{p.mu, p.log}
	p.cmd.Stderr = lockedWriter{p.mu, p.log}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("---- output of %s ----\n%s", name, p.Output())
		}
	})
	return p
}

// Output returns what the process printed so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Kill ends the process at once with SIGKILL (a crash, not a shutdown) and
// waits for it. Processes it started in their own process groups live on.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Stop ends the process group: SIGTERM, then SIGKILL after 10s.
func (p *Process) Stop(t testing.TB) {
	if p.Exited() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Logf("%s ignored SIGTERM for 10s; killing it", p.Name)
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// Server is a running control plane.
type Server struct {
	*Process
	URL string
	// Token is the bootstrap admin API token.
	Token string
	// Client trusts the server's certificate when it serves HTTPS.
	Client *http.Client
}

// StartServer runs `opsconductor server` over plain HTTP on a free port
// with env (at least DATABASE_URL) and waits until /health answers 200.
func StartServer(t testing.TB, name string, env map[string]string) *Server {
	t.Helper()
	return startServer(t, name, env, nil)
}

// StartServerTLS is StartServer over HTTPS with f's server certificate;
// with clientCA it also verifies client certificates against f's CA.
func StartServerTLS(t testing.TB, name string, env map[string]string, f TLSFiles, clientCA bool) *Server {
	t.Helper()
	full := map[string]string{"OPSCONDUCTOR_TLS_CERT": f.Cert, "OPSCONDUCTOR_TLS_KEY": f.Key}
	if clientCA {
		full["OPSCONDUCTOR_TLS_CLIENT_CA"] = f.CA
	}
	for k, v := range env {
		full[k] = v
	}
	return startServer(t, name, full, &f)
}

func startServer(t testing.TB, name string, env map[string]string, tlsFiles *TLSFiles) *Server {
	t.Helper()
	addr := env["OPSCONDUCTOR_ADDR"] // a test that must know it in advance (split mode) sets it
	if addr == "" {
		addr = FreeAddr(t)
	}
	tokenFile := filepath.Join(t.TempDir(), "admin-token")
	full := map[string]string{"OPSCONDUCTOR_ADDR": addr, "OPSCONDUCTOR_LOG_LEVEL": "debug", "OPSCONDUCTOR_BOOTSTRAP_TOKEN_FILE": tokenFile,
		// Tests poll the API fast; the rate limit has tests of its own.
		"OPSCONDUCTOR_RATE_LIMIT": "0"}
	s := &Server{URL: "http://" + addr, Client: http.DefaultClient}
	if tlsFiles == nil {
		full["OPSCONDUCTOR_INSECURE_HTTP"] = "true"
	} else {
		client, err := transport.NewHTTPClient(transport.Options{CAFile: tlsFiles.CA})
		if err != nil {
			t.Fatal(err)
		}
		s.URL, s.Client = "https://"+addr, client
	}
	for k, v := range env {
		full[k] = v
	}
	if _, ok := full["OPSCONDUCTOR_BUS_PREFIX"]; !ok {
		// Servers of one test (one database) share an event bus; tests
		// sharing the machine's Redis or RabbitMQ do not see each other's.
		sum := sha256.Sum256([]byte(full["DATABASE_URL"] + t.Name()))
		full["OPSCONDUCTOR_BUS_PREFIX"] = "test-" + hex.EncodeToString(sum[:6])
		if url := full["REDIS_URL"]; url != "" {
			prefix := full["OPSCONDUCTOR_BUS_PREFIX"]
			t.Cleanup(func() { dropRedisKeys(url, prefix) })
		}
	}
	p := Start(t, name, filepath.Join(Binaries(t), "opsconductor"), []string{"server"}, full)
	s.Process = p
	Eventually(t, 30*time.Second, func() error {
		if p.Exited() {
			t.Fatalf("%s exited during start:\n%s", name, p.Output())
		}
		resp, err := s.Client.Get(s.URL + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("health: %s", resp.Status)
		}
		return nil
	})
	// A server sharing a database with an earlier one finds the bootstrap
	// done and writes no file; SetToken then gives it the first one's.
	if raw, err := os.ReadFile(tokenFile); err == nil {
		s.Token = strings.TrimSpace(string(raw))
	}
	return s
}

// Do is DoJSON against this server's path, as its admin.
func (s *Server) Do(t testing.TB, method, path string, body, out any) int {
	t.Helper()
	return doJSON(t, s.Client, method, s.URL+path, http.Header{"Authorization": {"Bearer " + s.Token}}, body, out)
}

// JoinToken creates a join token through the REST API.
func (s *Server) JoinToken(t testing.TB) string {
	t.Helper()
	var out struct {
		Token string `json:"token"`
	}
	Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/agents/tokens", map[string]any{"description": "test"}, &out))
	return out.Token
}

// StartAgent runs an agent enrolled with a fresh join token.
func (s *Server) StartAgent(t testing.TB, name, labels string, extraArgs ...string) *Process {
	t.Helper()
	args := append([]string{"--server", s.URL, "--join-token", s.JoinToken(t), "--state-dir", t.TempDir(),
		"--name", name, "--labels", labels, "--log-level", "debug"}, extraArgs...)
	return Start(t, "agent "+name, filepath.Join(Binaries(t), "opsconductor-agent"), args, nil)
}

// WaitAgents waits until n agents are listed online.
func (s *Server) WaitAgents(t testing.TB, n int) {
	t.Helper()
	Eventually(t, 30*time.Second, func() error {
		var out struct {
			Agents []struct {
				Status string `json:"status"`
			} `json:"agents"`
		}
		if code := s.Do(t, "GET", "/api/v1/agents", nil, &out); code != http.StatusOK {
			return fmt.Errorf("list agents: HTTP %d", code)
		}
		online := 0
		for _, a := range out.Agents {
			if a.Status == "online" {
				online++
			}
		}
		if online != n {
			return fmt.Errorf("%d agents online, want %d", online, n)
		}
		return nil
	})
}

// DoJSON sends body (nil for none) as JSON and decodes the answer into out
// (may be nil). It returns the HTTP status code.
func DoJSON(t testing.TB, method, url string, body, out any) int {
	t.Helper()
	return DoJSONHeader(t, method, url, nil, body, out)
}

// DoJSONHeader is DoJSON with extra request headers.
func DoJSONHeader(t testing.TB, method, url string, header http.Header, body, out any) int {
	t.Helper()
	return doJSON(t, http.DefaultClient, method, url, header, body, out)
}

func doJSON(t testing.TB, client *http.Client, method, url string, header http.Header, body, out any) int {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		js, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(js)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, url, raw, err)
		}
	}
	return resp.StatusCode
}

// Must returns a checker that fails the test unless the status is want.
func Must(t testing.TB, want int) func(int) {
	return func(got int) {
		t.Helper()
		if got != want {
			t.Fatalf("HTTP status %d, want %d", got, want)
		}
	}
}

// Eventually retries check every 50ms until it returns nil, failing the
// test with the last error after timeout.
func Eventually(t testing.TB, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dropRedisKeys removes a test's event bus keys from a shared Redis.
// DropRedisKeys removes the keys (the event bus's streams) under prefix,
// for tests that set OPSCONDUCTOR_BUS_PREFIX themselves.
func DropRedisKeys(url, prefix string) { dropRedisKeys(url, prefix) }

func dropRedisKeys(url, prefix string) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if len(keys) > 0 {
		c.Del(ctx, keys...)
	}
}
