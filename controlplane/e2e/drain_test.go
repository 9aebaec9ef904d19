package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestDrain: a drained agent gets no new task while its running task
// completes normally; resumed, it takes the waiting one.
func TestDrain(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{
		"DATABASE_URL":              storetest.NewURL(t, store.Postgres),
		"OPSCONDUCTOR_POLL_RECHECK": "500ms",
	})
	s.StartAgent(t, "drainee", "role=drainee", "--capacity", "4")
	s.WaitAgents(t, 1)
	var agents struct {
		Agents []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"agents"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/agents", nil, &agents))
	id := agents.Agents[0].ID
	if agents.Agents[0].State != "active" {
		t.Fatalf("state %q, want active", agents.Agents[0].State)
	}
	started := filepath.Join(t.TempDir(), "started")
	long := createJob(t, s, map[string]any{"name": "long", "targets": []map[string]any{{"selector": "role=drainee"}},
		"actions": []map[string]any{{"command": "touch " + started + "; sleep 2; echo finished"}}})
	e1 := execute(t, s, long.ID)
	cptest.Eventually(t, 30*time.Second, func() error { _, err := os.Stat(started); return err })

	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/agents/"+id+"/drain", map[string]any{}, nil))
	short := createJob(t, s, map[string]any{"name": "short", "targets": []map[string]any{{"selector": "role=drainee"}},
		"actions": []map[string]any{{"command": "echo later"}}})
	e2 := execute(t, s, short.ID)

	r1 := waitFinished(t, s, e1.ID, 60*time.Second)
	if r1.Execution.Status != "succeeded" || r1.Results[0].Actions[0].Stdout != "finished\n" {
		t.Fatalf("the running task did not complete normally: %+v", r1)
	}
	// Several re-checks later the new task is still waiting.
	time.Sleep(2 * time.Second)
	var now struct {
		Execution execution `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions/"+e2.ID, nil, &now))
	if now.Execution.Tasks[0].Status != "queued" {
		t.Fatalf("a draining agent took a new task: %+v", now.Execution.Tasks[0])
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/agents/"+id+"/resume", map[string]any{}, nil))
	if r2 := waitFinished(t, s, e2.ID, 60*time.Second); r2.Execution.Status != "succeeded" {
		t.Fatalf("after resume: %s", r2.Execution.Status)
	}
	cptest.Must(t, http.StatusNotFound)(s.Do(t, "POST", "/api/v1/agents/no-such-agent/pause", map[string]any{}, nil))
}
