package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestAgentRestartReportsUnknown: an agent restarted mid-task reports from
// its journal that it cannot vouch for the action that was running
// (unknown), with the actions that finished before.
func TestAgentRestartReportsUnknown(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{
		"DATABASE_URL":                storetest.NewURL(t, store.SQLite),
		"OPSCONDUCTOR_LEASE_DURATION": "30s",
	})
	stateDir := t.TempDir()
	phoenix := s.StartAgent(t, "phoenix", "role=phoenix", "--state-dir", stateDir)
	s.WaitAgents(t, 1)
	dir := t.TempDir()
	j := createJob(t, s, map[string]any{"name": "interrupted", "targets": []map[string]any{{"selector": "role=phoenix"}},
		"actions": []map[string]any{{"name": "prepare", "command": "echo ready"}, {"name": "long", "command": "echo $$ > " + dir + "/pid; exec sleep 60"}}})
	e := execute(t, s, j.ID)
	cptest.Eventually(t, 30*time.Second, func() error { _, err := os.Stat(filepath.Join(dir, "pid")); return err })
	phoenix.Kill()
	killOrphan(t, filepath.Join(dir, "pid"))

	s.StartAgent(t, "phoenix", "role=phoenix", "--state-dir", stateDir)
	r := waitFinished(t, s, e.ID, 60*time.Second)
	tr := r.Results[0]
	if tr.Task.Status != "unknown" || !strings.Contains(tr.Task.Error, "action 2") {
		t.Fatalf("task after the restart: %+v", tr.Task)
	}
	if len(tr.Actions) < 2 || tr.Actions[0].Status != "succeeded" || tr.Actions[1].Status != "unknown" {
		t.Fatalf("actions after the restart: %+v", tr.Actions)
	}
	if r.Execution.Status != "failed" {
		t.Fatalf("execution %s, want failed", r.Execution.Status)
	}
}
