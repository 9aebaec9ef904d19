package server

import (
	"context"
	"crypto/ed25519"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/opsconductor/opsconductor/agent/identity"
	"github.com/opsconductor/opsconductor/controlplane/store"
	agentv1 "github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1"
	"github.com/opsconductor/opsconductor/proto/gen/opsconductor/agent/v1/agentv1connect"
	"github.com/opsconductor/opsconductor/proto/protocol"
)

// TestDangerousCommands: saving a dangerous job warns; executing it is
// refused naming the field and rule; an override needs a reason and the
// executions:dangerous permission, and is recorded. No agent ever polls in
// this test, so nothing is run.
func TestDangerousCommands(t *testing.T) {
	t.Parallel()
	srv := startApp(t, store.SQLite)
	// An enrolled agent that never polls: executions can be created, their
	// tasks stay queued.
	var tok struct {
		Token string `json:"token"`
	}
	if code := srv.do(t, "POST", "/api/v1/agents/tokens", map[string]any{}, &tok); code != http.StatusOK {
		t.Fatalf("join token: HTTP %d", code)
	}
	key, _ := identity.NewKey()
	_, err := agentv1connect.NewAgentServiceClient(http.DefaultClient, srv.url).Enroll(context.Background(), connect.NewRequest(&agentv1.EnrollRequest{
		JoinToken: tok.Token, Name: "idle", Labels: map[string]string{"role": "idle"}, ProtocolVersion: protocol.AgentProtocolVersion,
		PublicKey: key.Public().(ed25519.PublicKey)}))
	if err != nil {
		t.Fatal(err)
	}

	var created struct {
		Job struct {
			ID string `json:"id"`
		} `json:"job"`
		SafetyWarnings []struct {
			Field string `json:"field"`
			Rule  string `json:"rule"`
		} `json:"safetyWarnings"`
	}
	job := map[string]any{"name": "wipe", "targets": []map[string]any{{"selector": "role=idle"}},
		"actions": []map[string]any{{"command": "echo fine"}, {"command": "sudo rm -rf /"}}}
	if code := srv.do(t, "POST", "/api/v1/jobs", job, &created); code != http.StatusOK {
		t.Fatalf("create: HTTP %d", code)
	}
	if len(created.SafetyWarnings) == 0 || created.SafetyWarnings[0].Field != "job.actions[1].command" || created.SafetyWarnings[0].Rule == "" {
		t.Fatalf("warnings = %+v", created.SafetyWarnings)
	}
	exec := "/api/v1/jobs/" + created.Job.ID + "/execute"
	var refusal rpcStatus
	if code := srv.do(t, "POST", exec, map[string]any{}, &refusal); code != http.StatusBadRequest {
		t.Fatalf("execute without override: HTTP %d", code)
	}
	if !strings.Contains(refusal.Message, "job.actions[1].command") || strings.Join(refusal.fields(), ",") != "job.actions[1].command" {
		t.Fatalf("refusal = %+v", refusal)
	}
	if code := srv.do(t, "POST", exec, map[string]any{"dangerousOverride": map[string]any{"allow": true}}, &refusal); code != http.StatusBadRequest ||
		!strings.Contains(refusal.Message, "dangerous_override.reason") {
		t.Fatalf("override without reason: HTTP %d %+v", code, refusal)
	}
	var op struct {
		Secret string `json:"secret"`
	}
	srv.do(t, "POST", "/api/v1/tokens", map[string]any{"name": "op", "roles": []string{"operator"}}, &op)
	asOp := testServer{url: srv.url, token: op.Secret}
	override := map[string]any{"dangerousOverride": map[string]any{"allow": true, "reason": "decommissioning, ticket OPS-1"}}
	if code := asOp.do(t, "POST", exec, override, &refusal); code != http.StatusForbidden || !strings.Contains(refusal.Message, "executions:dangerous") {
		t.Fatalf("operator override: HTTP %d %+v", code, refusal)
	}
	var ok struct {
		Execution struct {
			ID                string `json:"id"`
			CreatedBy         string `json:"createdBy"`
			DangerousOverride struct {
				Allow  bool   `json:"allow"`
				Reason string `json:"reason"`
			} `json:"dangerousOverride"`
		} `json:"execution"`
	}
	if code := srv.do(t, "POST", exec, override, &ok); code != http.StatusOK {
		t.Fatalf("admin override: HTTP %d", code)
	}
	if !ok.Execution.DangerousOverride.Allow || ok.Execution.DangerousOverride.Reason != "decommissioning, ticket OPS-1" || ok.Execution.CreatedBy != "bootstrap-admin" {
		t.Fatalf("execution = %+v", ok.Execution)
	}

	var check struct {
		Verdict  string `json:"verdict"`
		Blocked  bool   `json:"blocked"`
		Findings []struct {
			Rule   string `json:"rule"`
			Reason string `json:"reason"`
		} `json:"findings"`
	}
	if code := srv.do(t, "POST", "/api/v1/safety/check", map[string]any{"command": "X=/; rm -rf $X"}, &check); code != http.StatusOK {
		t.Fatalf("check: HTTP %d", code)
	}
	if !check.Blocked || check.Verdict != "dangerous" || len(check.Findings) == 0 || check.Findings[0].Reason == "" {
		t.Fatalf("check = %+v", check)
	}
	var benign struct {
		Verdict string `json:"verdict"`
		Blocked bool   `json:"blocked"`
	}
	if code := srv.do(t, "POST", "/api/v1/safety/check", map[string]any{"command": "rm -rf ./build"}, &benign); code != http.StatusOK || benign.Blocked || benign.Verdict != "safe" {
		t.Fatalf("benign check: HTTP %d %+v", code, benign)
	}
	if code := srv.do(t, "POST", "/api/v1/safety/check", map[string]any{"command": "x", "language": "cobol"}, &refusal); code != http.StatusBadRequest {
		t.Fatalf("bad language: HTTP %d", code)
	}
}
