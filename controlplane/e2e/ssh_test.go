package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/agent/executor/sshtest"
	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestSSHThroughJumpAgent: a job whose actions use the built-in ssh
// executor runs, through a real agent process acting as the jump host, on
// Debian's OpenSSH server: a command, a script and a file upload with key login, a
// command with a password from a secret parameter, and the same with
// become (sudo). The password appears in no result and no log.
func TestSSHThroughJumpAgent(t *testing.T) {
	t.Parallel()
	sshd := sshtest.Start(t)
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": storetest.NewURL(t, store.Postgres)})
	jump := s.StartAgent(t, "jump-1", "role=jump")
	s.WaitAgents(t, 1)

	uploaded := filepath.Join(t.TempDir(), "uploaded.conf")
	withPassword := sshd.Spec(sshtest.User, "password", "{{ .params.ssh_password }}")
	withBecome := sshd.Spec(sshtest.User, "password", "{{ .params.ssh_password }}", "become", "true")
	j := createJob(t, s, map[string]any{"name": "remote", "targets": []map[string]any{{"selector": "role=jump"}},
		"parameters": []map[string]any{{"name": "ssh_password", "secret": true, "required": true}},
		"actions": []map[string]any{
			{"name": "key", "plugin": "ssh", "command": "echo key-as-$(id -un)", "spec": sshd.Spec("root")},
			{"name": "script", "plugin": "ssh", "script": "#!/bin/sh\nn=2\necho script-$((n*21))\n", "spec": sshd.Spec("root")},
			{"name": "upload", "plugin": "ssh", "upload": map[string]string{"destination": uploaded, "content": "key=value\n", "mode": "0600"}, "spec": sshd.Spec("root")},
			{"name": "password", "plugin": "ssh", "command": "echo password-as-$(id -un)", "spec": withPassword},
			{"name": "become", "plugin": "ssh", "command": "echo become-as-$(id -un)", "spec": withBecome},
		}})
	var out struct {
		Execution execution `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/jobs/"+j.ID+"/execute",
		map[string]any{"parameters": map[string]string{"ssh_password": sshtest.Password}}, &out))
	r := waitFinished(t, s, out.Execution.ID, 60*time.Second)
	if r.Execution.Status != "succeeded" || len(r.Results) != 1 {
		t.Fatalf("execution = %+v", r)
	}
	want := []string{"key-as-root\n", "script-42\n", "uploaded 10 bytes to " + uploaded + "\n", "password-as-" + sshtest.User + "\n", "become-as-root\n"}
	for i, a := range r.Results[0].Actions {
		if a.Status != "succeeded" || a.Stdout != want[i] {
			t.Fatalf("action %d (%s) = %+v, want stdout %q", i, a.Name, a, want[i])
		}
	}
	if b, err := os.ReadFile(uploaded); err != nil || string(b) != "key=value\n" {
		t.Fatalf("uploaded file = %q, %v", b, err)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), sshtest.Password) {
		t.Fatal("the SSH password appears in the results")
	}
	if strings.Contains(jump.Output(), sshtest.Password) || strings.Contains(s.Output(), sshtest.Password) {
		t.Fatal("the SSH password appears in a log")
	}

	// A wrong password fails the action as an authentication error.
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/jobs/"+j.ID+"/execute",
		map[string]any{"parameters": map[string]string{"ssh_password": "wrong-password"}}, &out))
	r = waitFinished(t, s, out.Execution.ID, 60*time.Second)
	if a := r.Results[0].Actions[3]; a.Status != "failed" || !strings.Contains(a.Error, "ssh authentication failed") {
		t.Fatalf("wrong password: %+v", a)
	}
}
