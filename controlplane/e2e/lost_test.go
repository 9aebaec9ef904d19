package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/opsconductor/opsconductor/agent/identity"
	"github.com/opsconductor/opsconductor/agent/state"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1/agentv1connect"
)

// TestLostAgent: killing an agent (SIGKILL) mid-task makes its task lost
// once its lease expires; with on_agent_loss requeue and a second eligible
// agent the task completes there; the old agent's stale attempt cannot
// change the recorded outcome.
func TestLostAgent(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{
		"DATABASE_URL":                storetest.NewURL(t, store.Postgres),
		"OPSCONDUCTOR_LEASE_DURATION": "2s",
		"OPSCONDUCTOR_REAP_INTERVAL":  "200ms",
		"OPSCONDUCTOR_POLL_RECHECK":   "1s",
	})
	victimState := t.TempDir()
	victim := s.StartAgent(t, "victim", "role=pool", "--capacity", "1", "--state-dir", victimState)
	s.StartAgent(t, "survivor", "role=pool", "--capacity", "2")
	s.WaitAgents(t, 2)
	dir := t.TempDir()
	j := createJob(t, s, map[string]any{"name": "movable", "targets": []map[string]any{{"selector": "role=pool"}},
		"policy":  map[string]any{"onAgentLoss": "requeue"},
		"actions": []map[string]any{{"command": "echo $$ > " + dir + "/$OPSCONDUCTOR_AGENT_NAME.started; sleep 3; echo done-on-$OPSCONDUCTOR_AGENT_NAME"}}})
	e := execute(t, s, j.ID)
	var victimTask string
	for _, tk := range e.Tasks {
		if tk.AgentName == "victim" {
			victimTask = tk.ID
		}
	}
	cptest.Eventually(t, 30*time.Second, func() error {
		_, err := os.Stat(filepath.Join(dir, "victim.started"))
		return err
	})
	plugins := childrenOf(victim.Pid())
	if len(plugins) == 0 {
		t.Fatal("the victim agent runs no plugin process; the task should run in its shell plugin")
	}
	victim.Kill()
	killOrphan(t, filepath.Join(dir, "victim.started"))
	// Its plugin processes see their agent gone and end.
	cptest.Eventually(t, 15*time.Second, func() error {
		for _, pid := range plugins {
			if running(pid) {
				return fmt.Errorf("plugin process %d of the killed agent still runs", pid)
			}
		}
		return nil
	})

	r := waitFinished(t, s, e.ID, 60*time.Second)
	if r.Execution.Status != "succeeded" || len(r.Results) != 2 {
		t.Fatalf("execution %s with %d results, want succeeded on 2", r.Execution.Status, len(r.Results))
	}
	for _, tr := range r.Results {
		if tr.Task.AgentName != "survivor" || tr.Task.Status != "succeeded" || !strings.Contains(tr.Actions[0].Stdout, "done-on-survivor") {
			t.Fatalf("result %+v: every task should have ended on the survivor", tr)
		}
	}

	// The victim comes back with its stale attempt (generation 1).
	id, err := state.FileStore{Dir: victimState}.Load()
	if err != nil {
		t.Fatal(err)
	}
	signer := identity.NewSigner(id.AgentID, id.PrivateKey)
	stale := agentv1connect.NewAgentServiceClient(http.DefaultClient, s.URL, connect.WithInterceptors(signer.Interceptor()))
	_, err = stale.CompleteTask(context.Background(), connect.NewRequest(&agentv1.CompleteTaskRequest{
		TaskId: victimTask, LeaseGeneration: 1, Status: "failed", Error: "stale report",
	}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("stale completion: %v, want FailedPrecondition", err)
	}
	after := waitFinished(t, s, e.ID, 10*time.Second)
	for _, tr := range after.Results {
		if tr.Task.Status != "succeeded" {
			t.Fatalf("the stale report changed the outcome: %+v", tr)
		}
	}

	// With the default policy (fail) a killed agent's task ends lost.
	solo := s.StartAgent(t, "solo", "role=solo")
	s.WaitAgents(t, 3)
	j2 := createJob(t, s, map[string]any{"name": "stuck", "targets": []map[string]any{{"selector": "role=solo"}},
		"actions": []map[string]any{{"command": "echo $$ > " + dir + "/solo.started; exec sleep 30"}}})
	e2 := execute(t, s, j2.ID)
	cptest.Eventually(t, 30*time.Second, func() error {
		_, err := os.Stat(filepath.Join(dir, "solo.started"))
		return err
	})
	solo.Kill()
	killOrphan(t, filepath.Join(dir, "solo.started"))
	r2 := waitFinished(t, s, e2.ID, 60*time.Second)
	if r2.Execution.Status != "failed" || r2.Results[0].Task.Status != "lost" || !strings.Contains(r2.Results[0].Task.Error, "lease expired") {
		t.Fatalf("killed agent without requeue: %+v", r2)
	}
}

// killOrphan stops the action a SIGKILLed agent left behind (actions run
// in their own process group, so killing the agent does not reach them):
// the test must not leave processes running.
func killOrphan(t *testing.T, pidFile string) {
	t.Helper()
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := procStat(child); len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// running reports whether pid is a live process (a zombie is not).
func running(pid int) bool {
	f := procStat(pid)
	return len(f) > 0 && f[0] != "Z"
}

// procStat is /proc/PID/stat's fields after the command: state, parent, ...
func procStat(pid int) []string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(raw), ')')
	if i < 0 || i+2 > len(raw) {
		return nil
	}
	return strings.Fields(string(raw[i+2:]))
}
