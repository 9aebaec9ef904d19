package e2e

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/opsconductor/opsconductor/agent/identity"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1/agentv1connect"
	"github.com/opsconductor/opsconductor/proto/protocol"
)

// enrollIdle enrolls an agent that never runs: a target for plans.
func enrollIdle(t *testing.T, s *cptest.Server, name, labels string) {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	l := map[string]string{}
	for _, kv := range strings.Split(labels, ",") {
		k, v, _ := strings.Cut(kv, "=")
		l[k] = v
	}
	_, err = agentv1connect.NewAgentServiceClient(http.DefaultClient, s.URL).Enroll(context.Background(), connect.NewRequest(&agentv1.EnrollRequest{
		JoinToken: s.JoinToken(t), Name: name, Labels: l, ProtocolVersion: protocol.AgentProtocolVersion, PublicKey: key.Public().(ed25519.PublicKey)}))
	if err != nil {
		t.Fatal(err)
	}
}

// TestExecAndPlan: `opsconductor exec --on SELECTOR -- CMD` runs on every
// matching agent and prints per-target results; `run --plan` on a job with
// 10 targets and batch_size 3 lists 4 batches and runs nothing.
func TestExecAndPlan(t *testing.T) {
	t.Parallel()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	s.StartAgent(t, "web-1", "role=web")
	s.StartAgent(t, "web-2", "role=web")
	s.StartAgent(t, "db-1", "role=db")
	s.WaitAgents(t, 3)

	out, errOut, code := cli(t, s, "exec", "--on", "role=web", "--", "echo", "hi-from-$OPSCONDUCTOR_AGENT_NAME")
	if code != 0 {
		t.Fatalf("exec: code %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{`web-1\s+succeeded\s+0\s+hi-from-web-1`, `web-2\s+succeeded\s+0\s+hi-from-web-2`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Fatalf("exec output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "db-1") {
		t.Fatalf("exec ran on db-1:\n%s", out)
	}
	_, errOut, code = cli(t, s, "exec", "--on", "role=web", "--", "rm", "-rf", "/")
	if code == 0 || !strings.Contains(errOut, "safety") {
		t.Fatalf("exec of rm -rf / was not refused: %d %s", code, errOut)
	}

	for i := 1; i <= 10; i++ {
		enrollIdle(t, s, fmt.Sprintf("fleet-%02d", i), "role=fleet")
	}
	createJob(t, s, map[string]any{"name": "fleet-job", "targets": []map[string]any{{"selector": "role=fleet"}},
		"policy":     map[string]any{"batchSize": 3},
		"actions":    []map[string]any{{"command": "echo {{ .params.msg }}"}},
		"parameters": []map[string]any{{"name": "msg", "default": "hello"}}})
	out, errOut, code = cli(t, s, "run", "fleet-job", "--plan")
	if code != 0 {
		t.Fatalf("plan: code %d %s", code, errOut)
	}
	for _, want := range []string{"10 targets in 4 batches (nothing was run)", "batch 1: fleet-01", "batch 4: fleet-10", "| echo hello"} {
		if !strings.Contains(out, want) {
			t.Fatalf("plan lacks %q:\n%s", want, out)
		}
	}
	var dry struct {
		Execution *struct{} `json:"execution"`
		Plan      struct {
			Batches []any `json:"batches"`
		} `json:"plan"`
	}
	var jobs struct {
		Jobs []job `json:"jobs"`
	}
	s.Do(t, "GET", "/api/v1/jobs?namePrefix=fleet-job", nil, &jobs)
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/jobs/"+jobs.Jobs[0].ID+"/execute", map[string]any{"dryRun": true}, &dry))
	if dry.Execution != nil || len(dry.Plan.Batches) != 4 {
		t.Fatalf("dry run: execution %v, %d batches", dry.Execution, len(dry.Plan.Batches))
	}
}
