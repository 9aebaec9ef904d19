package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestSafetyEndToEnd: the control plane refuses a blocked job unless an
// authorised override with a reason is given, and the agent refuses on
// its own what its rules block. Nothing destructive is used: the blocked
// commands are harmless echoes that operator rules mark as dangerous.
func TestSafetyEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	serverRules := write("server-rules.yaml", `
extra_rules:
  - id: test.server-marker
    severity: critical
    reason: the server-side test marker
    pattern: '^echo opsconductor-server-marker$'
`)
	agentRules := write("agent-rules.yaml", `
extra_rules:
  - id: test.server-marker
    pattern: '^echo opsconductor-server-marker$'
  - id: test.agent-marker
    reason: the agent-side test marker
    pattern: '^echo opsconductor-agent-marker$'
`)
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite), "OPSCONDUCTOR_SAFETY_RULES": serverRules})
	s.StartAgent(t, "guarded", "role=guarded", "--safety-rules", agentRules)
	s.WaitAgents(t, 1)

	job := write("job.yaml", "name: marked\nactions:\n  - command: echo opsconductor-server-marker\ntargets:\n  - selector: role=guarded\n")
	_, errOut, code := cli(t, s, "job", "apply", "-f", job)
	if code != 0 || !strings.Contains(errOut, "warning: job.actions[0].command") || !strings.Contains(errOut, "test.server-marker") {
		t.Fatalf("apply: code %d, stderr %s", code, errOut)
	}
	out, errOut, code := cli(t, s, "run", "marked", "--follow")
	if code == 0 || !strings.Contains(errOut, "job.actions[0].command") || !strings.Contains(errOut, "override") {
		t.Fatalf("run without override: code %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = cli(t, s, "run", "marked", "--follow", "--allow-dangerous", "test of the override path")
	if code != 0 || !strings.Contains(out, "#1 out| opsconductor-server-marker") {
		t.Fatalf("run with override: code %d\n%s%s", code, out, errOut)
	}

	agentOnly := write("agent-only.yaml", "name: agent-marked\nactions:\n  - command: echo opsconductor-agent-marker\n  - command: echo never\ntargets:\n  - selector: role=guarded\n")
	if _, errOut, code := cli(t, s, "job", "apply", "-f", agentOnly); code != 0 || strings.Contains(errOut, "warning") {
		t.Fatalf("apply of a job only the agent blocks: code %d %s", code, errOut)
	}
	out, _, code = cli(t, s, "run", "agent-marked", "--follow")
	if code != 2 || !strings.Contains(out, "refused by the agent's safety check") || strings.Contains(out, "never") {
		t.Fatalf("agent-side refusal: code %d\n%s", code, out)
	}

	if _, _, code := cli(t, s, "safety", "check", "--local", "--", "sudo", "rm", "-rf", "/"); code != 3 {
		t.Fatalf("safety check --local of rm -rf /: exit %d, want 3", code)
	}
	out, _, code = cli(t, s, "safety", "check", "--", "rm", "-rf", "./build")
	if code != 0 || !strings.Contains(out, "verdict: safe") {
		t.Fatalf("safety check of rm -rf ./build: exit %d %s", code, out)
	}
}
