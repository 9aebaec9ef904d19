package e2e

import (
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/agent/executor/sshtest"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestValidateConnect: GET /api/v1/jobs/{id}/validate?connect=true has a
// jump agent connect to each remote host, running nothing, and reports per
// host: reachable, a wrong password, a closed port. Without connect nothing
// is tried; a viewer (no executions:run) may not ask for it.
func TestValidateConnect(t *testing.T) {
	t.Parallel()
	sshd := sshtest.Start(t, "127.0.0.2")
	port, _ := strconv.Atoi(sshd.Port)
	closed, _ := strconv.Atoi(sshtest.FreePort(t))
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite)})
	s.StartAgent(t, "jump-1", "role=jump")
	s.WaitAgents(t, 1)
	opts := map[string]string{"known_hosts": sshd.KnownHosts, "connect_timeout": "3s"}
	j := createJob(t, s, map[string]any{"name": "reach", "targets": []map[string]any{
		{"remote": map[string]any{"via": "role=jump", "hosts": []map[string]any{{"address": "127.0.0.1", "name": "good", "port": port}},
			"user": "root", "credential": "agent:" + sshd.KeyFile, "options": opts}},
		{"remote": map[string]any{"via": "role=jump", "hosts": []map[string]any{{"address": "127.0.0.2", "name": "badpass", "port": port}},
			"user": sshtest.User, "options": map[string]string{"known_hosts": sshd.KnownHosts, "password": "wrong"}}},
		{"remote": map[string]any{"via": "role=jump", "hosts": []map[string]any{{"address": "127.0.0.1", "name": "closed", "port": closed}},
			"user": "root", "credential": "agent:" + sshd.KeyFile, "options": opts}},
	}, "actions": []map[string]any{{"command": "touch /tmp/must-not-run-" + strconv.Itoa(port)}}})

	type check struct {
		Host      string `json:"host"`
		AgentName string `json:"agentName"`
		Reachable bool   `json:"reachable"`
		Error     string `json:"error"`
	}
	var out struct {
		Valid            bool    `json:"valid"`
		HostChecks       []check `json:"hostChecks"`
		CheckExecutionID string  `json:"checkExecutionId"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/jobs/"+j.ID+"/validate", nil, &out))
	if !out.Valid || len(out.HostChecks) != 0 {
		t.Fatalf("validate without connect = %+v", out)
	}
	// Proto JSON leaves out a false "valid": decode into a fresh answer.
	out.Valid, out.HostChecks = false, nil
	cptest.Must(t, http.StatusOK)(s.Do(t, "GET", "/api/v1/jobs/"+j.ID+"/validate?connect=true", nil, &out))
	sort.Slice(out.HostChecks, func(a, b int) bool { return out.HostChecks[a].Host < out.HostChecks[b].Host })
	if out.Valid || len(out.HostChecks) != 3 || out.CheckExecutionID == "" {
		t.Fatalf("validate with connect = %+v", out)
	}
	badpass, closedCheck, good := out.HostChecks[0], out.HostChecks[1], out.HostChecks[2]
	if !good.Reachable || good.AgentName != "jump-1" {
		t.Fatalf("good host: %+v", good)
	}
	if badpass.Reachable || !strings.Contains(badpass.Error, "ssh authentication failed") {
		t.Fatalf("wrong password: %+v", badpass)
	}
	if closedCheck.Reachable || !strings.Contains(closedCheck.Error, "ssh connection error") {
		t.Fatalf("closed port: %+v", closedCheck)
	}
	// Nothing of the job ran: the check is an execution of its own.
	r := waitFinished(t, s, out.CheckExecutionID, 10*time.Second)
	for _, res := range r.Results {
		if len(res.Actions) != 1 || res.Actions[0].Name != "connect" {
			t.Fatalf("the check ran %+v", res.Actions)
		}
	}
	// The same check as a POST, its parameters in the body.
	out.Valid, out.HostChecks = true, nil
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/jobs/"+j.ID+"/validate", map[string]any{"connect": true, "parameters": map[string]string{}}, &out))
	if len(out.HostChecks) != 3 {
		t.Fatalf("validate by POST = %+v", out)
	}
	viewer := token(t, s, "viewer-1", "viewer")
	if code := as(t, s, viewer, "GET", "/api/v1/jobs/"+j.ID+"/validate?connect=true", nil, nil); code != http.StatusForbidden {
		t.Fatalf("a viewer asking for connection checks: HTTP %d, want 403", code)
	}
}
