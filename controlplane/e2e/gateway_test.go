package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/agent/transport"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestComposeGateway runs the compose lab's gateway configuration
// (deploy/compose/gateway/nginx.conf) with a real nginx in front of two
// real control-plane replicas, its host names and ports moved to
// loopback: an agent enrolls and runs a job through it over TLS, both
// replicas serve calls, plain HTTP is redirected, CORS answers only the
// listed origins, and a flood from one client is rate limited.
func TestComposeGateway(t *testing.T) {
	t.Parallel()
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		t.Fatal("nginx is needed (apt-get install nginx-light): ", err)
	}
	env := map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres), "REDIS_URL": redisURL}
	a := cptest.StartServer(t, "cp1", env)
	b := cptest.StartServer(t, "cp2", env)
	b.Token = a.Token

	tlsFiles := cptest.NewTLS(t)
	raw, err := os.ReadFile(filepath.Join(cptest.ModuleRoot(), "deploy/compose/gateway/nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	httpAddr, httpsAddr := cptest.FreeAddr(t), cptest.FreeAddr(t)
	conf := string(raw)
	for from, to := range map[string]string{
		"server cp1:8080":                         "server " + strings.TrimPrefix(a.URL, "http://"),
		"server cp2:8080":                         "server " + strings.TrimPrefix(b.URL, "http://"),
		"listen 8080;":                            "listen " + httpAddr + ";",
		"listen 8443 ssl http2;":                  "listen " + httpsAddr + " ssl http2;",
		"/etc/nginx/certs/tls.crt":                tlsFiles.Cert,
		"/etc/nginx/certs/tls.key":                tlsFiles.Key,
		"https://$host:8443$request_uri":          "https://" + httpsAddr + "$request_uri",
		"\"https://localhost:8443\" $http_origin": "\"https://console.test\" $http_origin",
	} {
		if !strings.Contains(conf, from) {
			t.Fatalf("nginx.conf no longer has %q: update this test", from)
		}
		conf = strings.ReplaceAll(conf, from, to)
	}
	prefix := t.TempDir()
	confPath := filepath.Join(prefix, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(nginx, "-t", "-p", prefix, "-c", confPath, "-g", "pid "+prefix+"/nginx.pid;").CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	gwProc := cptest.Start(t, "gateway", nginx, []string{"-p", prefix, "-c", confPath, "-g", "pid " + prefix + "/nginx.pid; daemon off;"}, nil)
	client, err := transport.NewHTTPClient(transport.Options{CAFile: tlsFiles.CA})
	if err != nil {
		t.Fatal(err)
	}
	gw := &cptest.Server{URL: "https://" + httpsAddr, Token: a.Token, Client: client}
	cptest.Eventually(t, 30*time.Second, func() error {
		resp, err := client.Get(gw.URL + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("health through the gateway: %s", resp.Status)
		}
		return nil
	})

	// An agent through the gateway, over TLS, with a long poll of 30 s.
	cptest.Start(t, "agent", filepath.Join(cptest.Binaries(t), "opsconductor-agent"),
		[]string{"--server", gw.URL, "--ca-file", tlsFiles.CA, "--join-token", gw.JoinToken(t), "--state-dir", t.TempDir(),
			"--name", "behind-gateway", "--labels", "role=gw", "--poll-wait", "30s"}, nil)
	gw.WaitAgents(t, 1)
	j := createJob(t, gw, map[string]any{"name": "through-gateway", "targets": []map[string]any{{"selector": "role=gw"}},
		"actions": []map[string]any{{"command": "echo through the gateway"}}})
	if r := waitFinished(t, gw, execute(t, gw, j.ID).ID, 30*time.Second); r.Execution.Status != "succeeded" {
		t.Fatalf("job through the gateway: %+v", r)
	}

	// Both replicas answer calls (the access log names the upstream).
	cptest.Eventually(t, 30*time.Second, func() error {
		resp, err := client.Get(gw.URL + "/version")
		if err != nil {
			return err
		}
		resp.Body.Close()
		log := gwProc.Output()
		for _, s := range []*cptest.Server{a, b} {
			if !strings.Contains(log, strings.TrimPrefix(s.URL, "http://")) {
				return fmt.Errorf("no call reached %s yet", s.URL)
			}
		}
		return nil
	})

	// Plain HTTP is redirected to HTTPS.
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get("http://" + httpAddr + "/api/v1/jobs")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect || resp.Header.Get("Location") != gw.URL+"/api/v1/jobs" {
		t.Fatalf("plain HTTP: %s to %q, want 308 to %s", resp.Status, resp.Header.Get("Location"), gw.URL+"/api/v1/jobs")
	}

	// CORS: a listed origin gets its preflight answered; another does not.
	for origin, allowed := range map[string]bool{"https://console.test": true, "https://evil.test": false} {
		req, _ := http.NewRequest(http.MethodOptions, gw.URL+"/api/v1/jobs", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got := resp.Header.Get("Access-Control-Allow-Origin")
		if resp.StatusCode != http.StatusNoContent || (got == origin) != allowed || (!allowed && got != "") {
			t.Fatalf("preflight from %s: %s, Access-Control-Allow-Origin %q", origin, resp.Status, got)
		}
	}

	// A flood from one client: beyond 50/s with a burst of 100, calls are
	// refused with 429. Eight callers at once send 400 calls: however
	// slow the machine, they cannot all fit.
	var limited atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				resp, err := client.Get(gw.URL + "/version")
				if err != nil {
					return
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusTooManyRequests {
					limited.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if limited.Load() == 0 {
		t.Fatal("400 calls at once were never rate limited")
	}
}
