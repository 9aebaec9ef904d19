package e2e

import (
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestSandboxedActions: through a real agent process, a sandboxed fork
// bomb and a sandboxed memory hog are each stopped by their limit and
// reported as such; the job's next action, a job running beside them on
// the same agent, and the agent itself carry on.
func TestSandboxedActions(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the sandbox test needs root (.ci/run runs as root)")
		}
		t.Skip("needs root and cgroups")
	}
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite)})
	agent := s.StartAgent(t, "box-1", "role=box")
	s.WaitAgents(t, 1)

	hogs := createJob(t, s, map[string]any{"name": "hogs", "targets": []map[string]any{{"selector": "role=box"}}, "actions": []map[string]any{
		{"name": "bomb", "command": "bomb() { bomb | bomb & }; bomb; sleep 120", "continueOnError": true,
			"spec": map[string]string{"sandbox": "true", "sandbox_processes": "40"}},
		{"name": "hog", "command": `x=$(head -c 400000000 /dev/zero | tr '\0' a); echo survived`, "continueOnError": true,
			"spec": map[string]string{"sandbox": "true", "sandbox_memory": "64M"}},
		{"name": "after", "command": "echo still-here"},
	}})
	neighbour := createJob(t, s, map[string]any{"name": "neighbour", "targets": []map[string]any{{"selector": "role=box"}},
		"actions": []map[string]any{{"command": "sleep 3; echo neighbour-ok"}}})
	var out struct {
		Execution execution `json:"execution"`
	}
	code := s.Do(t, "POST", "/api/v1/jobs/"+hogs.ID+"/execute", map[string]any{}, &out)
	if code == http.StatusBadRequest {
		// The safety checker may call the bomb dangerous: that is the
		// point of this job, so override it as an admin would.
		code = s.Do(t, "POST", "/api/v1/jobs/"+hogs.ID+"/execute", map[string]any{
			"dangerousOverride": map[string]any{"allow": true, "reason": "sandbox test"}}, &out)
	}
	cptest.Must(t, http.StatusOK)(code)
	hogRun := out.Execution.ID
	n := execute(t, s, neighbour.ID)

	r := waitFinished(t, s, hogRun, 90*time.Second)
	acts := r.Results[0].Actions
	if len(acts) != 3 {
		t.Fatalf("actions = %+v", acts)
	}
	if !strings.Contains(acts[0].Error, "stopped by the sandbox: process limit of 40 reached") {
		t.Fatalf("fork bomb: %+v", acts[0])
	}
	if !strings.Contains(acts[1].Error, "stopped by the sandbox: memory limit of 64MiB reached") {
		t.Fatalf("memory hog: %+v", acts[1])
	}
	if acts[2].Status != "succeeded" || acts[2].Stdout != "still-here\n" {
		t.Fatalf("the action after them: %+v", acts[2])
	}
	nr := waitFinished(t, s, n.ID, 60*time.Second)
	if nr.Execution.Status != "succeeded" || nr.Results[0].Actions[0].Stdout != "neighbour-ok\n" {
		t.Fatalf("the job beside them: %+v", nr)
	}
	if agent.Exited() {
		t.Fatal("the agent died")
	}
}
