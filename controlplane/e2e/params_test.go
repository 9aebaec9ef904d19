package e2e

import (
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/opsconductor/opsconductor/controlplane/cptest"
	"github.com/opsconductor/opsconductor/controlplane/store"
	"github.com/opsconductor/opsconductor/controlplane/storetest"
)

// TestParameters: a missing required parameter, a wrong type and an
// unknown parameter are refused naming the parameter; a secret value is in
// no stored row, no log line and no output.
func TestParameters(t *testing.T) {
	t.Parallel()
	dbURL := storetest.NewURL(t, store.Postgres)
	s := cptest.StartServer(t, "server", map[string]string{"DATABASE_URL": dbURL})
	agent := s.StartAgent(t, "deployer", "role=deployer")
	s.WaitAgents(t, 1)
	const secret = "s3cr3t-VALUE-9f8e7d"
	j := createJob(t, s, map[string]any{"name": "deploy", "targets": []map[string]any{{"selector": "role=deployer"}},
		"parameters": []map[string]any{
			{"name": "env", "type": "enum", "choices": []string{"dev", "prod"}, "required": true},
			{"name": "count", "type": "int", "default": "1"},
			{"name": "verbose", "type": "bool", "default": "false"},
			{"name": "token", "secret": true, "required": true},
		},
		"actions": []map[string]any{{"command": `echo "deploying {{ .params.env }} x{{ .params.count }} verbose={{ .params.verbose }}"; echo "token=$OPSCONDUCTOR_PARAM_TOKEN"; echo "inline={{ .params.token }}" >&2`}}})

	refused := []struct {
		values map[string]string
		field  string
	}{
		{map[string]string{"token": "x"}, "parameters.env"},
		{map[string]string{"env": "prod", "token": "x", "count": "many"}, "parameters.count"},
		{map[string]string{"env": "qa", "token": "x"}, "parameters.env"},
		{map[string]string{"env": "prod", "token": "x", "colour": "red"}, "parameters.colour"},
		{map[string]string{"env": "prod"}, "parameters.token"},
	}
	for _, r := range refused {
		var st struct {
			Message string `json:"message"`
		}
		cptest.Must(t, http.StatusBadRequest)(s.Do(t, "POST", "/api/v1/jobs/"+j.ID+"/execute", map[string]any{"parameters": r.values}, &st))
		if !strings.Contains(st.Message, r.field) {
			t.Fatalf("values %v: %q does not name %s", r.values, st.Message, r.field)
		}
	}
	var out struct {
		Execution struct {
			ID         string            `json:"id"`
			Parameters map[string]string `json:"parameters"`
		} `json:"execution"`
	}
	cptest.Must(t, http.StatusOK)(s.Do(t, "POST", "/api/v1/jobs/"+j.ID+"/execute",
		map[string]any{"parameters": map[string]string{"env": "prod", "count": "3", "token": secret}}, &out))
	if out.Execution.Parameters["token"] != "********" || out.Execution.Parameters["env"] != "prod" || out.Execution.Parameters["verbose"] != "false" {
		t.Fatalf("execution parameters = %v", out.Execution.Parameters)
	}
	r := waitFinished(t, s, out.Execution.ID, 60*time.Second)
	a := r.Results[0].Actions[0]
	if r.Execution.Status != "succeeded" || a.Stdout != "deploying prod x3 verbose=false\ntoken=********\n" || a.Stderr != "inline=********\n" {
		t.Fatalf("result: %s stdout %q stderr %q", r.Execution.Status, a.Stdout, a.Stderr)
	}

	dump, err := exec.Command("pg_dump", "--data-only", dbURL).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, dump)
	}
	if !strings.Contains(string(dump), out.Execution.ID) {
		t.Fatal("the dump lacks the execution: it did not dump the right database")
	}
	// Output is stored as bytes (hex in the dump) and in events (base64):
	// look for every encoding, at every base64 alignment.
	forms := []string{secret, hex.EncodeToString([]byte(secret))}
	for pad := 0; pad < 3; pad++ {
		enc := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", pad) + secret))
		forms = append(forms, enc[4:len(enc)-4])
	}
	for _, f := range forms {
		if strings.Contains(string(dump), f) {
			t.Fatalf("the secret value is stored in the clear (as %q)", f)
		}
	}
	for name, logs := range map[string]string{"server": s.Output(), "agent": agent.Output()} {
		if strings.Contains(logs, secret) {
			t.Fatalf("the secret value appears in the %s log", name)
		}
	}
}
