package server

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/opsconductor/opsconductor/controlplane/config"
	"github.com/opsconductor/opsconductor/controlplane/store"
	opsconductorv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/v1/opsconductorv1connect"
)

func request(t *testing.T, method, url string, header http.Header, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestRateLimit: a principal over its limit gets 429 / ResourceExhausted
// with a Retry-After hint; another principal is unaffected.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	srv := startApp(t, store.SQLite, func(c *config.Config) { c.RateLimit, c.RateBurst = 1, 5 })
	hdr := http.Header{"Authorization": {"Bearer " + srv.token}}
	var limited *http.Response
	for i := 0; i < 20 && limited == nil; i++ {
		if resp := request(t, "GET", srv.url+"/api/v1/jobs", hdr, ""); resp.StatusCode == http.StatusTooManyRequests {
			limited = resp
		} else if resp.StatusCode != http.StatusOK {
			t.Fatalf("call %d: HTTP %d", i, resp.StatusCode)
		}
	}
	if limited == nil {
		t.Fatal("20 calls at once with a burst of 5 were never limited")
	}
	if secs, err := strconv.Atoi(limited.Header.Get("Retry-After")); err != nil || secs < 1 {
		t.Fatalf("Retry-After = %q, want whole seconds", limited.Header.Get("Retry-After"))
	}
	c := opsconductorv1connect.NewJobServiceClient(http.DefaultClient, srv.url, bearer(srv.token))
	_, err := c.ListJobs(context.Background(), connect.NewRequest(&opsconductorv1.ListJobsRequest{}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("Connect over the limit: %v, want ResourceExhausted", err)
	}
	// Failed authentications are limited per address too.
	bad := http.Header{"Authorization": {"Bearer oct_guess"}}
	got429 := false
	for i := 0; i < 20 && !got429; i++ {
		got429 = request(t, "GET", srv.url+"/api/v1/jobs", bad, "").StatusCode == http.StatusTooManyRequests
	}
	if !got429 {
		t.Fatal("20 failed authentications at once were never slowed down")
	}
}

// TestCORSBodyLimitAndHeaders: the dashboard's origin may call the API,
// other origins are refused; oversized bodies are refused; security
// headers are set.
func TestCORSBodyLimitAndHeaders(t *testing.T) {
	t.Parallel()
	srv := startApp(t, store.SQLite, func(c *config.Config) {
		c.CORSOrigins = "https://dash.example.com"
		c.MaxRequestBytes = 4096
	})
	auth := "Bearer " + srv.token
	pre := request(t, "OPTIONS", srv.url+"/api/v1/jobs", http.Header{
		"Origin": {"https://dash.example.com"}, "Access-Control-Request-Method": {"GET"}, "Access-Control-Request-Headers": {"authorization"},
	}, "")
	if pre.StatusCode/100 != 2 || pre.Header.Get("Access-Control-Allow-Origin") != "https://dash.example.com" {
		t.Fatalf("preflight from the allowed origin: HTTP %d, allow-origin %q", pre.StatusCode, pre.Header.Get("Access-Control-Allow-Origin"))
	}
	ok := request(t, "GET", srv.url+"/api/v1/jobs", http.Header{"Origin": {"https://dash.example.com"}, "Authorization": {auth}}, "")
	if ok.StatusCode != http.StatusOK || ok.Header.Get("Access-Control-Allow-Origin") != "https://dash.example.com" {
		t.Fatalf("call from the allowed origin: HTTP %d, allow-origin %q", ok.StatusCode, ok.Header.Get("Access-Control-Allow-Origin"))
	}
	for _, method := range []string{"GET", "OPTIONS"} {
		evil := request(t, method, srv.url+"/api/v1/jobs", http.Header{"Origin": {"https://evil.example"}, "Authorization": {auth},
			"Access-Control-Request-Method": {"GET"}}, "")
		if evil.StatusCode != http.StatusForbidden || evil.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("%s from another origin: HTTP %d, allow-origin %q", method, evil.StatusCode, evil.Header.Get("Access-Control-Allow-Origin"))
		}
	}
	// No Origin (CLI, agents) passes as before.
	if r := request(t, "GET", srv.url+"/api/v1/jobs", http.Header{"Authorization": {auth}}, ""); r.StatusCode != http.StatusOK {
		t.Fatalf("call without Origin: HTTP %d", r.StatusCode)
	}

	big := `{"name": "` + strings.Repeat("x", 8000) + `"}`
	r := request(t, "POST", srv.url+"/api/v1/jobs", http.Header{"Authorization": {auth}, "Content-Type": {"application/json"}}, big)
	if r.StatusCode != http.StatusRequestEntityTooLarge && r.StatusCode != http.StatusBadRequest {
		t.Fatalf("oversized body: HTTP %d, want 413 or 400", r.StatusCode)
	}
	for k, want := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Cache-Control": "no-store"} {
		if got := ok.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
}

// TestMetricsToken: /metrics is open by default and can require a token.
func TestMetricsToken(t *testing.T) {
	t.Parallel()
	srv := startApp(t, store.SQLite, func(c *config.Config) { c.MetricsToken = "scrape-secret" })
	if r := request(t, "GET", srv.url+"/metrics", http.Header{}, ""); r.StatusCode != http.StatusUnauthorized {
		t.Fatalf("metrics without the token: HTTP %d", r.StatusCode)
	}
	if r := request(t, "GET", srv.url+"/metrics", http.Header{"Authorization": {"Bearer scrape-secret"}}, ""); r.StatusCode != http.StatusOK {
		t.Fatalf("metrics with the token: HTTP %d", r.StatusCode)
	}
	if r := request(t, "GET", srv.url+"/health", http.Header{}, ""); r.StatusCode != http.StatusOK {
		t.Fatalf("health stays open: HTTP %d", r.StatusCode)
	}
}
