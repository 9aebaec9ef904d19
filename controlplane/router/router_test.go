package router

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/opsconductor/opsconductor/controlplane/config"
	"github.com/opsconductor/opsconductor/controlplane/remote"
	"github.com/opsconductor/opsconductor/controlplane/server"
)

// fakeService records the Connect procedures it is called with and
// answers each with status (200: an empty message).
type fakeService struct {
	mu     sync.Mutex
	paths  []string
	status int
}

func (f *fakeService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.paths = append(f.paths, r.Method+" "+r.URL.Path)
	status := f.status
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if status != http.StatusOK {
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"code": "unavailable", "message": "a dependency of mine is down"})
		return
	}
	_, _ = w.Write([]byte("{}"))
}

func (f *fakeService) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.paths...)
}

func setup(t *testing.T) (*Router, map[string]*fakeService, map[string]*httptest.Server) {
	t.Helper()
	fakes := map[string]*fakeService{}
	servers := map[string]*httptest.Server{}
	urls := map[string]string{}
	for _, name := range config.AllServices {
		fakes[name] = &fakeService{status: http.StatusOK}
		servers[name] = httptest.NewServer(fakes[name])
		t.Cleanup(servers[name].Close)
		urls[name] = servers[name].URL
	}
	r, err := New(server.Services(), urls, remote.Options{Failures: 3, OpenFor: time.Minute}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	return r, fakes, servers
}

func call(t *testing.T, h http.Handler, method, path string) (*httptest.ResponseRecorder, map[string]any) {
	t.Helper()
	var req *http.Request
	if method == "GET" || method == "OPTIONS" {
		req = httptest.NewRequest(method, path, nil)
	} else {
		req = httptest.NewRequest(method, path, strings.NewReader("{}"))
		req.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	var body map[string]any
	_ = json.Unmarshal(w.Body.Bytes(), &body)
	return w, body
}

// TestRoutesByTheAPIsRules: REST paths go where their RPC is served, by
// the API's HTTP rules (not by prefix), as Connect calls.
func TestRoutesByTheAPIsRules(t *testing.T) {
	r, fakes, _ := setup(t)
	for _, c := range []struct{ method, path, service, procedure string }{
		{"GET", "/api/v1/jobs/j1", config.ServiceJobs, "/opsconductor.v1.JobService/GetJob"},
		{"POST", "/api/v1/jobs/j1/execute", config.ServiceExecutions, "/opsconductor.v1.ExecutionService/ExecuteJob"},
		{"GET", "/api/v1/schedules/job/j1", config.ServiceScheduling, "/opsconductor.v1.ScheduleService/ListJobSchedules"},
		{"GET", "/api/v1/audit", config.ServiceAudit, "/opsconductor.v1.AuditService/ListAuditRecords"},
	} {
		if w, _ := call(t, r, c.method, c.path); w.Code != http.StatusOK {
			t.Errorf("%s %s: HTTP %d %s", c.method, c.path, w.Code, w.Body)
			continue
		}
		got := fakes[c.service].got()
		if len(got) == 0 || !strings.HasSuffix(got[len(got)-1], c.procedure) {
			t.Errorf("%s %s reached the %s service as %v, want %s", c.method, c.path, c.service, got, c.procedure)
		}
	}
	// The services' internal API is not reachable through the gateway.
	if w, _ := call(t, r, "POST", "/opsconductor.interservice.v1.AuthInternalService/Authenticate"); w.Code == http.StatusOK {
		t.Fatal("the gateway routed an internal call")
	}
	// Preflights go to a service (which answers CORS); so does /version.
	if w, _ := call(t, r, "OPTIONS", "/api/v1/jobs"); w.Code != http.StatusOK || len(fakes[config.ServiceJobs].got()) == 0 {
		t.Fatalf("OPTIONS: HTTP %d", w.Code)
	}
}

// TestBreakerCountsOnlyServicesThatCannotBeReached: a service's own
// error answers (even Unavailable) leave its breaker closed; a service
// that cannot be reached opens it after Failures calls, and then its calls
// fail at once, naming it, while the other services are still served.
func TestBreakerCountsOnlyServicesThatCannotBeReached(t *testing.T) {
	r, fakes, servers := setup(t)
	fakes[config.ServiceExecutions].mu.Lock()
	fakes[config.ServiceExecutions].status = http.StatusServiceUnavailable
	fakes[config.ServiceExecutions].mu.Unlock()
	for i := 0; i < 5; i++ {
		call(t, r, "POST", "/api/v1/jobs/j1/execute")
	}
	if state := r.State(config.ServiceExecutions); state != "closed" {
		t.Fatalf("a service answering Unavailable opened its breaker: %s", state)
	}

	servers[config.ServiceAudit].Close()
	for i := 0; i < 3; i++ {
		if w, _ := call(t, r, "GET", "/api/v1/audit"); w.Code != http.StatusServiceUnavailable {
			t.Fatalf("call %d to a dead service: HTTP %d", i, w.Code)
		}
	}
	if state := r.State(config.ServiceAudit); state != "open" {
		t.Fatalf("after 3 failures the breaker is %s", state)
	}
	w, body := call(t, r, "GET", "/api/v1/audit")
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(body["message"].(string), "the audit service is unavailable: its circuit breaker is open") {
		t.Fatalf("with the breaker open: HTTP %d %v", w.Code, body)
	}
	if w, _ := call(t, r, "GET", "/api/v1/jobs/j1"); w.Code != http.StatusOK {
		t.Fatalf("the jobs service while audit is down: HTTP %d", w.Code)
	}
}
