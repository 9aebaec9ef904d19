package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestCancelRunning: cancelling `sleep 300` on three agents ends every one
// of those processes within 5 s and marks the tasks cancelled. The agents
// are busy (capacity 1), so the cancel reaches them through the poll they
// keep open for control messages.
func TestCancelRunning(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	for i := 1; i <= 3; i++ {
		s.StartAgent(t, fmt.Sprintf("sleeper-%d", i), "role=sleeper", "--capacity", "1")
	}
	s.WaitAgents(t, 3)
	dir := t.TempDir()
	j := createJob(t, s, map[string]any{"name": "sleepy", "targets": []map[string]any{{"selector": "role=sleeper"}},
		"actions": []map[string]any{
			{"name": "nap", "command": "echo $$ > " + dir + "/$OPSCONDUCTOR_AGENT_NAME.pid; exec sleep 300"},
			{"name": "never", "command": "echo never"},
		}})
	e := execute(t, s, j.ID)
	pids := map[string]int{}
	cptest.Eventually(t, 30*time.Second, func() error {
		for i := 1; i <= 3; i++ {
			name := fmt.Sprintf("sleeper-%d", i)
			raw, err := os.ReadFile(filepath.Join(dir, name+".pid"))
			if err != nil {
				return err
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
			if err != nil {
				return err
			}
			pids[name] = pid
		}
		return nil
	})
	start := time.Now()
	var out struct {
		Execution execution `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/executions/"+e.ID+"/cancel", map[string]any{"reason": "wrong change"}, &out))
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/executions/"+e.ID+"/cancel", map[string]any{}, nil)) // idempotent
	cptest.Eventually(t, 10*time.Second, func() error {
		for name, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				return fmt.Errorf("%s's sleep (pid %d) is still alive", name, pid)
			}
		}
		return nil
	})
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the processes ended %s after the cancel, want within 5s", took)
	}
	r := waitFinished(t, s, e.ID, 30*time.Second)
	if r.Execution.Status != "cancelled" {
		t.Fatalf("execution %s, want cancelled", r.Execution.Status)
	}
	for _, tr := range r.Results {
		if tr.Task.Status != "cancelled" || tr.Actions[0].Status != "cancelled" || tr.Actions[1].Status != "skipped" {
			t.Fatalf("%s: %+v", tr.Task.AgentName, tr)
		}
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/executions/"+e.ID+"/cancel", map[string]any{}, nil)) // still idempotent
	// The agents are free again; a succeeded execution cannot be cancelled.
	j2 := createJob(t, s, map[string]any{"name": "after-cancel", "targets": []map[string]any{{"selector": "role=sleeper"}},
		"actions": []map[string]any{{"command": "echo back"}}})
	e2 := execute(t, s, j2.ID)
	if r := waitFinished(t, s, e2.ID, 30*time.Second); r.Execution.Status != "succeeded" {
		t.Fatalf("next execution: %s", r.Execution.Status)
	}
	var refusal struct {
		Message string `json:"message"`
	}
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "POST", "/api/v1/executions/"+e2.ID+"/cancel", map[string]any{}, &refusal))
	if !strings.Contains(refusal.Message, "succeeded") {
		t.Fatalf("cancel of a finished execution: %q", refusal.Message)
	}
}
