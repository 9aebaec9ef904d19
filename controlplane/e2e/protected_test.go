package e2e

import (
	"net/http"
	"strings"
	"testing"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// token makes an API token with one role and returns its secret.
func token(t *testing.T, s *cptest.Server, name, role string) string {
	t.Helper()
	var out struct {
		Secret string `json:"secret"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/tokens", map[string]any{"name": name, "roles": []string{role}}, &out))
	return out.Secret
}

// as sends a REST call with another principal's token.
func as(t *testing.T, s *cptest.Server, secret, method, path string, body, out any) int {
	t.Helper()
	return cptest.DoJSONHeader(t, method, s.URL+path, http.Header{"Authorization": {"Bearer " + secret}}, body, out)
}

// TestProtectedTargets: a developer may define jobs but not run them on
// production (env=prod) agents; an operator may.
func TestProtectedTargets(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite)})
	s.StartAgent(t, "prod-1", "env=prod,role=web")
	s.StartAgent(t, "dev-1", "env=dev,role=web")
	s.WaitAgents(t, 2)
	dev, op := token(t, s, "dev", "developer"), token(t, s, "op", "operator")

	var created struct {
		Job job `json:"job"`
	}
	body := map[string]any{"name": "web-restart", "targets": []map[string]any{{"selector": "role=web"}},
		"actions": []map[string]any{{"command": "echo restarted"}}}
	cptest.Must(t, http.StatusOK)(as(t, s, dev, "POST", "/api/v1/jobs", body, &created))
	var refusal struct {
		Message string `json:"message"`
	}
	cptest.Must(t, http.StatusForbidden)(as(t, s, dev, "POST", "/api/v1/jobs/"+created.Job.ID+"/execute", map[string]any{}, &refusal))
	if !strings.Contains(refusal.Message, "prod-1") || !strings.Contains(refusal.Message, "executions:run-protected") {
		t.Fatalf("refusal = %q, want it to name the agent and the permission", refusal.Message)
	}
	devOnly := map[string]any{"name": "dev-restart", "targets": []map[string]any{{"selector": "env=dev"}},
		"actions": []map[string]any{{"command": "echo restarted"}}}
	var devJob struct {
		Job job `json:"job"`
	}
	cptest.Must(t, http.StatusOK)(as(t, s, dev, "POST", "/api/v1/jobs", devOnly, &devJob))
	cptest.Must(t, http.StatusOK)(as(t, s, dev, "POST", "/api/v1/jobs/"+devJob.Job.ID+"/execute", map[string]any{}, nil))
	var ran struct {
		Execution execution `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(as(t, s, op, "POST", "/api/v1/jobs/"+created.Job.ID+"/execute", map[string]any{}, &ran))
	if len(ran.Execution.Tasks) != 2 {
		t.Fatalf("operator's execution has %d tasks, want 2", len(ran.Execution.Tasks))
	}
	// Cancelling takes the same right as running: the developer may not
	// stop the operator's run on production; the operator may (it may
	// have ended already, which is a precondition failure, not a refusal).
	cptest.Must(t, http.StatusForbidden)(as(t, s, dev, "POST", "/api/v1/executions/"+ran.Execution.ID+"/cancel", map[string]any{}, &refusal))
	if !strings.Contains(refusal.Message, "prod-1") {
		t.Fatalf("cancel refusal = %q, want it to name the protected agent", refusal.Message)
	}
	if code := as(t, s, op, "POST", "/api/v1/executions/"+ran.Execution.ID+"/cancel", map[string]any{}, nil); code != http.StatusOK && code != http.StatusBadRequest {
		t.Fatalf("operator's cancel = %d, want 200 or 400", code)
	}
}
