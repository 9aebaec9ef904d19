package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestDeadlines: an execution past its deadline is cancelled with the
// reason recorded; a target's run past task_timeout ends timed_out.
func TestDeadlines(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{
		"DATABASE_URL":               storetest.NewURL(t, store.SQLite),
		"OPSCONDUCTOR_REAP_INTERVAL": "200ms",
	})
	s.StartAgent(t, "clock", "role=clock")
	s.WaitAgents(t, 1)

	slow := createJob(t, s, map[string]any{"name": "too-slow", "targets": []map[string]any{{"selector": "role=clock"}},
		"policy":  map[string]any{"timeout": "2s"},
		"actions": []map[string]any{{"command": "sleep 60"}}})
	start := time.Now()
	r := waitFinished(t, s, execute(t, s, slow.ID).ID, 60*time.Second)
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("a 2s deadline took %s to end the execution", took)
	}
	var e struct {
		Execution struct {
			Status string `json:"status"`
			Reason string `json:"reason"`
		} `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions/"+r.Execution.ID, nil, &e))
	if e.Execution.Status != "cancelled" || !strings.Contains(e.Execution.Reason, "deadline") || r.Results[0].Task.Status != "cancelled" {
		t.Fatalf("past its deadline: %+v, task %s", e.Execution, r.Results[0].Task.Status)
	}

	capped := createJob(t, s, map[string]any{"name": "task-capped", "targets": []map[string]any{{"selector": "role=clock"}},
		"policy":  map[string]any{"taskTimeout": "1s"},
		"actions": []map[string]any{{"command": "sleep 0.2"}, {"command": "sleep 30"}, {"command": "echo never"}}})
	r = waitFinished(t, s, execute(t, s, capped.ID).ID, 60*time.Second)
	tr := r.Results[0]
	if tr.Task.Status != "timed_out" || tr.Actions[0].Status != "succeeded" || tr.Actions[1].Status != "timed_out" || tr.Actions[2].Status != "skipped" {
		t.Fatalf("task past task_timeout: %+v", tr)
	}
}
