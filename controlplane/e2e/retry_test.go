package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestRetryFailed: retry-failed on an execution with 1 failed of 3 targets
// runs exactly that target, linked to its parent; all_targets runs all.
func TestRetryFailed(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	for i := 1; i <= 3; i++ {
		s.StartAgent(t, fmt.Sprintf("node-%d", i), "role=node")
	}
	s.WaitAgents(t, 3)
	j := createJob(t, s, map[string]any{"name": "flaky", "targets": []map[string]any{{"selector": "role=node"}},
		"actions": []map[string]any{{"command": `test "$OPSCONDUCTOR_AGENT_NAME" != node-2`}}})
	first := waitFinished(t, s, execute(t, s, j.ID).ID, 60*time.Second)
	if first.Execution.Status != "failed" || byAgent(first)["node-2"].Task.Status != "failed" {
		t.Fatalf("first run: %+v", first)
	}
	var retried struct {
		Execution struct {
			ID       string `json:"id"`
			ParentID string `json:"parentId"`
			Tasks    []task `json:"tasks"`
		} `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/executions/"+first.Execution.ID+"/retry", map[string]any{}, &retried))
	if retried.Execution.ParentID != first.Execution.ID || len(retried.Execution.Tasks) != 1 || retried.Execution.Tasks[0].AgentName != "node-2" {
		t.Fatalf("retry = %+v, want one task on node-2 linked to %s", retried.Execution, first.Execution.ID)
	}
	if r := waitFinished(t, s, retried.Execution.ID, 60*time.Second); len(r.Results) != 1 || r.Results[0].Task.AgentName != "node-2" {
		t.Fatalf("retry results: %+v", r.Results)
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/executions/"+first.Execution.ID+"/retry", map[string]any{"allTargets": true}, &retried))
	if len(retried.Execution.Tasks) != 3 {
		t.Fatalf("retry of all targets has %d tasks", len(retried.Execution.Tasks))
	}
	waitFinished(t, s, retried.Execution.ID, 60*time.Second)

	// Listing: the first run and its two retries, newest first; by status.
	type listing struct {
		Executions []struct {
			ID         string           `json:"id"`
			Status     string           `json:"status"`
			ParentID   string           `json:"parentId"`
			TaskCounts map[string]int32 `json:"taskCounts"`
		} `json:"executions"`
		NextPageToken string `json:"nextPageToken"`
	}
	var list listing
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions?jobId="+j.ID+"&pageSize=2", nil, &list))
	if len(list.Executions) != 2 || list.NextPageToken == "" || list.Executions[0].ID != retried.Execution.ID {
		t.Fatalf("first page = %+v", list)
	}
	token := list.NextPageToken
	list = listing{}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions?jobId="+j.ID+"&pageSize=2&pageToken="+token, nil, &list))
	if len(list.Executions) != 1 || list.Executions[0].ID != first.Execution.ID || list.NextPageToken != "" {
		t.Fatalf("second page = %+v", list)
	}
	list = listing{}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/executions?status=succeeded", nil, &list))
	for _, e := range list.Executions {
		if e.Status != "succeeded" {
			t.Fatalf("status filter returned %+v", e)
		}
	}
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "GET", "/api/v1/executions?status=sideways", nil, nil))

	// A target override runs the job on exactly those targets.
	var agents struct {
		Agents []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"agents"`
	}
	s.Do(t, "GET", "/api/v1/agents", nil, &agents)
	node1 := ""
	for _, a := range agents.Agents {
		if a.Name == "node-1" {
			node1 = a.ID
		}
	}
	var override struct {
		Execution execution `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/executions", map[string]any{"jobId": j.ID,
		"targets": []map[string]any{{"agentId": node1}}}, &override))
	if len(override.Execution.Tasks) != 1 || override.Execution.Tasks[0].AgentName != "node-1" {
		t.Fatalf("override execution tasks = %+v", override.Execution.Tasks)
	}
	waitFinished(t, s, override.Execution.ID, 60*time.Second)
	var bad struct {
		Message string `json:"message"`
	}
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "POST", "/api/v1/executions", map[string]any{"jobId": j.ID,
		"targets": []map[string]any{{"selector": "role"}}}, &bad))
	if !strings.Contains(bad.Message, "targets[0].selector") {
		t.Fatalf("bad override: %q", bad.Message)
	}

	ok := createJob(t, s, map[string]any{"name": "fine", "targets": []map[string]any{{"selector": "role=node"}},
		"actions": []map[string]any{{"command": "true"}}})
	good := waitFinished(t, s, execute(t, s, ok.ID).ID, 60*time.Second)
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "POST", "/api/v1/executions/"+good.Execution.ID+"/retry", map[string]any{}, nil))
}
