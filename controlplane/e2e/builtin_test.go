package e2e

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestBuiltinExecutorsArePlugins: the agent runs its built-in executors
// as plugin processes of its own binary (one file to install). An action
// sees the shell plugin as its parent; when that plugin process dies
// mid-action, only that action fails, saying so, and the next action runs
// in a fresh plugin while the agent carries on.
func TestBuiltinExecutorsArePlugins(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite)})
	agent := s.StartAgent(t, "plug-1", "role=plug")
	s.WaitAgents(t, 1)
	j := createJob(t, s, map[string]any{"name": "builtins", "targets": []map[string]any{{"selector": "role=plug"}}, "actions": []map[string]any{
		{"name": "parent", "command": `tr '\0' ' ' < /proc/$PPID/cmdline`},
		{"name": "crash", "command": "kill -KILL $PPID; sleep 30", "continueOnError": true},
		{"name": "after", "command": `echo after; tr '\0' ' ' < /proc/$PPID/cmdline`},
	}})
	r := waitFinished(t, s, execute(t, s, j.ID).ID, 60*time.Second)
	acts := r.Results[0].Actions
	if len(acts) != 3 {
		t.Fatalf("actions = %+v", acts)
	}
	if !strings.Contains(acts[0].Stdout, "opsconductor-agent __opsconductor_plugin shell") {
		t.Fatalf("the shell action's parent is %q, not the agent's shell plugin", acts[0].Stdout)
	}
	if acts[1].Status != "failed" || !strings.Contains(acts[1].Error, "the shell executor crashed during the action") {
		t.Fatalf("the action whose plugin died: %+v", acts[1])
	}
	if acts[2].Status != "succeeded" || !strings.HasPrefix(acts[2].Stdout, "after\n") || !strings.Contains(acts[2].Stdout, "__opsconductor_plugin shell") {
		t.Fatalf("the action after the crash: %+v", acts[2])
	}
	if agent.Exited() {
		t.Fatal("the agent died with its plugin")
	}
	// The crashed action's sleep did not outlive it.
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && strings.Contains(string(env), "OPSCONDUCTOR_TASK_ID="+r.Results[0].Task.ID) {
			cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			t.Fatalf("process %s (%q) of the task outlived it", e.Name(), cmd)
		}
	}
}
