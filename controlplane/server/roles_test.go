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

// enrollIdle enrolls an agent that never polls: executions can be created
// for it, and nothing ever runs.
func enrollIdle(t *testing.T, srv testServer, name string, labels map[string]string) {
	t.Helper()
	var tok struct {
		Token string `json:"token"`
	}
	if code := srv.do(t, "POST", "/api/v1/agents/tokens", map[string]any{}, &tok); code != http.StatusOK {
		t.Fatalf("join token: HTTP %d", code)
	}
	key, _ := identity.NewKey()
	_, err := agentv1connect.NewAgentServiceClient(http.DefaultClient, srv.url).Enroll(context.Background(), connect.NewRequest(&agentv1.EnrollRequest{
		JoinToken: tok.Token, Name: name, Labels: labels, ProtocolVersion: protocol.AgentProtocolVersion, PublicKey: key.Public().(ed25519.PublicKey)}))
	if err != nil {
		t.Fatal(err)
	}
}

// TestCustomRolesAndUsers: a custom role scoped to team=web jobs on
// role=web agents; a user holding it; disabling and deleting the user.
func TestCustomRolesAndUsers(t *testing.T) {
	t.Parallel()
	srv := startApp(t, store.SQLite)
	enrollIdle(t, srv, "web-1", map[string]string{"role": "web"})
	enrollIdle(t, srv, "db-1", map[string]string{"role": "db"})

	var st rpcStatus
	bad := []struct {
		role  map[string]any
		field string
	}{
		{map[string]any{"name": "x", "permissions": []string{"jobs:fly"}}, "role.permissions[0]"},
		{map[string]any{"name": "admin", "permissions": []string{"jobs:read"}}, "role.name"},
		{map[string]any{"name": "x", "permissions": []string{"jobs:read"}, "jobSelector": "team"}, "role.job_selector"},
		{map[string]any{"name": "x"}, "role.permissions"},
	}
	for _, b := range bad {
		if code := srv.do(t, "POST", "/api/v1/roles", b.role, &st); code != http.StatusBadRequest || !strings.Contains(strings.Join(st.fields(), ","), b.field) {
			t.Fatalf("role %v: HTTP %d %+v, want 400 naming %s", b.role, code, st, b.field)
		}
	}
	role := map[string]any{"name": "web-dev", "description": "web team developers",
		"permissions": []string{"self:read", "jobs:read", "jobs:write", "executions:read", "executions:run"},
		"jobSelector": "team=web", "targetSelector": "role=web"}
	if code := srv.do(t, "POST", "/api/v1/roles", role, nil); code != http.StatusOK {
		t.Fatalf("create role: HTTP %d", code)
	}
	if code := srv.do(t, "POST", "/api/v1/roles", role, nil); code != http.StatusConflict {
		t.Fatalf("duplicate role: HTTP %d", code)
	}
	if code := srv.do(t, "POST", "/api/v1/users", map[string]any{"name": "alice", "roles": []string{"web-dev"}}, nil); code != http.StatusOK {
		t.Fatalf("create user: HTTP %d", code)
	}
	if code := srv.do(t, "POST", "/api/v1/users", map[string]any{"name": "bob", "roles": []string{"nope"}}, &st); code != http.StatusBadRequest {
		t.Fatalf("user with an unknown role: HTTP %d", code)
	}
	var tok struct {
		Secret string `json:"secret"`
		Token  struct {
			ID string `json:"id"`
		} `json:"token"`
	}
	if code := srv.do(t, "POST", "/api/v1/tokens", map[string]any{"name": "alice-laptop", "user": "alice"}, &tok); code != http.StatusOK {
		t.Fatalf("token for alice: HTTP %d", code)
	}
	alice := testServer{url: srv.url, token: tok.Secret}

	job := func(name, team, target string) map[string]any {
		return map[string]any{"name": name, "labels": map[string]string{"team": team},
			"targets": []map[string]any{{"selector": "role=" + target}}, "actions": []map[string]any{{"command": "true"}}}
	}
	var created struct {
		Job struct {
			ID string `json:"id"`
		} `json:"job"`
	}
	if code := alice.do(t, "POST", "/api/v1/jobs", job("web-ok", "web", "web"), &created); code != http.StatusOK {
		t.Fatalf("alice creates a team=web job: HTTP %d", code)
	}
	webJob := created.Job.ID
	if code := alice.do(t, "POST", "/api/v1/jobs", job("db-no", "db", "db"), &st); code != http.StatusForbidden {
		t.Fatalf("alice creates a team=db job: HTTP %d", code)
	}
	moved := job("web-ok", "db", "web")
	moved["version"] = 1
	if code := alice.do(t, "PUT", "/api/v1/jobs/"+webJob, moved, &st); code != http.StatusForbidden {
		t.Fatalf("alice moves her job to team=db: HTTP %d", code)
	}
	if code := alice.do(t, "POST", "/api/v1/jobs/"+webJob+"/execute", map[string]any{}, nil); code != http.StatusOK {
		t.Fatalf("alice runs her web job on role=web: HTTP %d", code)
	}
	if code := alice.do(t, "POST", "/api/v1/jobs", job("web-on-db", "web", "db"), &created); code != http.StatusOK {
		t.Fatalf("alice defines a web job for db agents: HTTP %d", code)
	}
	if code := alice.do(t, "POST", "/api/v1/jobs/"+created.Job.ID+"/execute", map[string]any{}, &st); code != http.StatusForbidden || !strings.Contains(st.Message, "targets") {
		t.Fatalf("alice runs on role=db agents: HTTP %d %+v", code, st)
	}
	var who struct {
		Principal   string   `json:"principal"`
		Roles       []string `json:"roles"`
		Permissions []string `json:"permissions"`
	}
	alice.do(t, "GET", "/api/v1/whoami", nil, &who)
	if who.Principal != "alice" || len(who.Roles) != 1 || who.Roles[0] != "web-dev" || !strings.Contains(strings.Join(who.Permissions, " "), `team=web`) {
		t.Fatalf("whoami = %+v", who)
	}

	if code := srv.do(t, "DELETE", "/api/v1/roles/web-dev", nil, &st); code != http.StatusBadRequest || !strings.Contains(st.Message, "user alice") {
		t.Fatalf("delete a role in use: HTTP %d %+v", code, st)
	}
	if code := srv.do(t, "PUT", "/api/v1/users/alice", map[string]any{"roles": []string{"web-dev"}, "disabled": true}, nil); code != http.StatusOK {
		t.Fatalf("disable alice: HTTP %d", code)
	}
	if code := alice.do(t, "GET", "/api/v1/whoami", nil, &st); code != http.StatusUnauthorized || !strings.Contains(st.Message, "disabled") {
		t.Fatalf("disabled user's token: HTTP %d %+v", code, st)
	}
	if code := srv.do(t, "PUT", "/api/v1/users/alice", map[string]any{"roles": []string{"viewer"}}, nil); code != http.StatusOK {
		t.Fatalf("re-enable alice as viewer: HTTP %d", code)
	}
	if code := alice.do(t, "POST", "/api/v1/jobs", job("web-2", "web", "web"), &st); code != http.StatusForbidden {
		t.Fatalf("alice as viewer creates a job: HTTP %d (her token's roles must follow the user's)", code)
	}
	if code := srv.do(t, "DELETE", "/api/v1/users/alice", nil, nil); code != http.StatusOK {
		t.Fatalf("delete alice: HTTP %d", code)
	}
	if code := alice.do(t, "GET", "/api/v1/whoami", nil, &st); code != http.StatusUnauthorized {
		t.Fatalf("deleted user's token: HTTP %d", code)
	}
	if code := srv.do(t, "DELETE", "/api/v1/roles/web-dev", nil, nil); code != http.StatusOK {
		t.Fatalf("delete the role once unused: HTTP %d", code)
	}
	var roles struct {
		Roles []struct {
			Name    string `json:"name"`
			Builtin bool   `json:"builtin"`
		} `json:"roles"`
	}
	srv.do(t, "GET", "/api/v1/roles", nil, &roles)
	if len(roles.Roles) != 5 {
		t.Fatalf("roles after delete = %+v, want the 5 built-in ones", roles.Roles)
	}
}
