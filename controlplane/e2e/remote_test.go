package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/agent/executor/sshtest"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestRemoteTargetsThroughJumpAgents: 50 remote hosts (distinct loopback
// addresses 127.0.0.1-50, one real sshd listening on all of them) are one
// job target reached through any agent labelled role=jump. Each host is
// one task; both jump agents take part (each may run at most 30 at once and
// every task holds its slot for a second, so neither can take all 50); the
// non-jump agent takes none; every host answers from its own address.
func TestRemoteTargetsThroughJumpAgents(t *testing.T) {
	t.Parallel()
	const hosts = 50
	var extra []string
	for i := 2; i <= hosts; i++ {
		extra = append(extra, fmt.Sprintf("127.0.0.%d", i))
	}
	sshd := sshtest.Start(t, extra...)
	port, _ := strconv.Atoi(sshd.Port)
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	s.StartAgent(t, "jump-1", "role=jump", "--remote-capacity=30")
	s.StartAgent(t, "jump-2", "role=jump", "--remote-capacity=30")
	s.StartAgent(t, "web-1", "role=web")
	s.WaitAgents(t, 3)

	var list []map[string]any
	for i := 1; i <= hosts; i++ {
		list = append(list, map[string]any{"address": fmt.Sprintf("127.0.0.%d", i), "name": fmt.Sprintf("host-%02d", i)})
	}
	j := createJob(t, s, map[string]any{"name": "fleet", "targets": []map[string]any{{"remote": map[string]any{
		"via": "role=jump", "hosts": list, "port": port, "user": "root", "credential": "agent:" + sshd.KeyFile,
		"options": map[string]string{"known_hosts": sshd.KnownHosts}, "labels": map[string]string{"env": "lab"},
	}}}, "actions": []map[string]any{
		// SSH_CONNECTION is "client-ip client-port server-ip server-port":
		// the third word is the address the jump agent reached.
		{"name": "whoami", "command": "set -- $SSH_CONNECTION; echo $(id -un) at $3; sleep 1"},
	}})
	e := execute(t, s, j.ID)
	r := waitFinished(t, s, e.ID, 120*time.Second)
	if r.Execution.Status != "succeeded" || len(r.Results) != hosts {
		t.Fatalf("execution %s with %d results, want succeeded with %d: %+v", r.Execution.Status, len(r.Results), hosts, r.Execution.Tasks)
	}
	perAgent := map[string]int{}
	for _, res := range r.Results {
		n, err := strconv.Atoi(strings.TrimPrefix(res.Task.Host, "host-"))
		if err != nil {
			t.Fatalf("task host %q", res.Task.Host)
		}
		want := fmt.Sprintf("root at 127.0.0.%d\n", n)
		if len(res.Actions) != 1 || res.Actions[0].Stdout != want {
			t.Fatalf("host %s: actions %+v, want stdout %q", res.Task.Host, res.Actions, want)
		}
		perAgent[res.Task.AgentName]++
	}
	if perAgent["jump-1"] == 0 || perAgent["jump-2"] == 0 || perAgent["jump-1"]+perAgent["jump-2"] != hosts {
		t.Fatalf("tasks per jump agent = %v, want both jump agents and only them", perAgent)
	}
	t.Logf("tasks per jump agent: %v", perAgent)

	// A via selector no agent matches is refused, naming the target.
	var refusal struct {
		Message string `json:"message"`
	}
	bad := createJob(t, s, map[string]any{"name": "nowhere", "targets": []map[string]any{{"remote": map[string]any{
		"via": "role=bastion", "hosts": []map[string]any{{"address": "127.0.0.1"}}}}},
		"actions": []map[string]any{{"command": "true"}}})
	cptest.Must(t, http.StatusBadRequest)(s.Do(t, "POST", "/api/v1/jobs/"+bad.ID+"/execute", map[string]any{}, &refusal))
	if !strings.Contains(refusal.Message, "remote.via role=bastion matches no enrolled agent") {
		t.Fatalf("refusal = %q", refusal.Message)
	}
}
