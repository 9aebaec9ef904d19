package e2e

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/agent/executor/sshtest"
	"github.com/opsconductor/opsconductor/agent/executor/winrmtest"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/secretbox"
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

// TestWinRMThroughJumpAgent: a remote target with transport winrm runs
// through a real jump agent process against the WS-Management emulator
// (winrmtest: no Windows host exists here), logging in over NTLM with a
// stored password credential (Basic over plain HTTP is refused for a
// stored password); a cmd command and a PowerShell script report their
// output and exit codes per action.
func TestWinRMThroughJumpAgent(t *testing.T) {
	t.Parallel()
	const password = "W1nRM-Cred-Value"
	win := winrmtest.Start(t, "Administrator", password, false)
	win.RequireNTLM()
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.SQLite),
		"OPSCONDUCTOR_CREDENTIAL_KEYS": "k1:" + base64.StdEncoding.EncodeToString(secretbox.NewKey())})
	jump := s.StartAgent(t, "jump-win", "role=jump")
	s.WaitAgents(t, 1)
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/credentials", map[string]any{
		"credential": map[string]any{"name": "win-admin", "kind": "password", "hosts": []string{"127.0.0.1"}}, "value": password}, nil))
	j := createJob(t, s, map[string]any{"name": "windows", "targets": []map[string]any{{"remote": map[string]any{
		"via": "role=jump", "transport": "winrm", "port": win.Port, "credential": "win-admin", "options": map[string]string{"auth": "ntlm"},
		"hosts": []map[string]any{{"address": "127.0.0.1", "name": "win-1"}}}}},
		"actions": []map[string]any{
			{"name": "cmd", "command": "echo hello from cmd"},
			{"name": "ps", "script": "Write-Output 'hello from powershell'\nexit 4", "spec": map[string]string{"shell": "powershell"}},
		}})
	e := execute(t, s, j.ID)
	r := waitFinished(t, s, e.ID, 60*time.Second)
	if r.Execution.Status != "failed" || len(r.Results) != 1 || len(r.Results[0].Actions) != 2 {
		t.Fatalf("execution = %+v", r)
	}
	res := r.Results[0]
	if res.Task.Host != "win-1" || res.Task.AgentName != "jump-win" {
		t.Fatalf("task = %+v", res.Task)
	}
	if a := res.Actions[0]; a.Status != "succeeded" || a.Stdout != "hello from cmd\r\n" {
		t.Fatalf("cmd action = %+v", a)
	}
	if a := res.Actions[1]; a.Status != "failed" || a.ExitCode != 4 || a.Stdout != "hello from powershell\r\n" {
		t.Fatalf("powershell action = %+v", a)
	}
	if strings.Contains(jump.Output(), password) || strings.Contains(s.Output(), password) {
		t.Fatal("the WinRM password appears in a log")
	}
	var sawPS bool
	for _, c := range win.Calls() {
		sawPS = sawPS || strings.HasPrefix(c.Command, "powershell.exe -EncodedCommand ")
	}
	if !sawPS {
		t.Fatalf("no PowerShell command reached the emulator: %+v", win.Calls())
	}
}
